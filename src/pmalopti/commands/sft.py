"""`pmalopti sft`: fine-tune a checkpoint on prompt -> target pairs (loss on the target only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pmalopti.config import add_config_args

HELP = "supervised fine-tuning on a task's prompt -> answer pairs (PMA-init with --init-from)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sft",
        help=HELP,
        description=HELP
        + ". Example: pmalopti sft --config configs/sft_tiny.yaml --init-from runs/tiny/merged -o runs/sft",
    )
    add_config_args(p)
    p.add_argument("-o", "--output", metavar="RUN", required=True, help="run folder")
    p.add_argument("--init-from", metavar="CKPT", help="checkpoint to fine-tune (fresh optimizer)")
    p.add_argument("--resume", action="store_true", help="continue RUN from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty run folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from pmalopti.config import load_config
    from pmalopti.train.loop import Interrupted
    from pmalopti.train.sft import SFTConfig, sft

    run_dir = Path(args.output)
    config_path = args.config
    if args.resume and config_path is None:
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"cannot resume: {config_path} does not exist")
    overrides = list(args.overrides)
    if args.init_from:
        if not Path(args.init_from, "config.json").is_file():
            raise FileNotFoundError(
                f"--init-from {args.init_from}: not a Hugging Face model folder"
            )
        overrides.append(f"init_from={args.init_from}")
    cfg = load_config(SFTConfig, config_path, overrides)
    try:
        result, final = sft(cfg, run_dir, resume=args.resume, force=args.force)
    except Interrupted as exc:
        print(f"pmalopti sft: {exc}", file=sys.stderr)
        return 130
    print(f"fine-tuned to step {result.step}; last checkpoint {result.last_checkpoint}")
    print(json.dumps(final))
    return 0
