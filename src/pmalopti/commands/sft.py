"""`pmalopti sft`: fine-tune a checkpoint on prompt -> target pairs (loss on the target only)."""

from __future__ import annotations

import json
import sys

from pmalopti.commands._common import add_output, add_training

HELP = "supervised fine-tuning on a task's prompt -> answer pairs (PMA-init with --init-from)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sft",
        help=HELP,
        description=HELP
        + ". Example: pmalopti sft --config configs/sft_tiny.yaml --init-from runs/tiny/merged -o runs/sft",
    )
    add_output(p, metavar="RUN", required=True, help="run folder")
    add_training(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pmalopti.commands._run_config import load_run_config
    from pmalopti.lm.sft import SFTConfig, sft
    from pmalopti.runtime.stop import Interrupted

    cfg, run_dir = load_run_config(SFTConfig, args, args.output)
    try:
        result, final = sft(cfg, run_dir, resume=args.resume, force=args.force)
    except Interrupted as exc:
        print(f"pmalopti sft: {exc}", file=sys.stderr)
        return 130
    print(f"fine-tuned to step {result.step}; last checkpoint {result.last_checkpoint}")
    print(json.dumps(final))
    return 0
