"""`pmalopti pretrain`: train a tiny causal LM under a WSD schedule; `--report RUN` for PMA tables."""

from __future__ import annotations

import sys
from pathlib import Path

from pmalopti.commands._common import add_output, add_training

HELP = "pre-train a small causal LM (WSD schedule, HF checkpoints) and report PMA merges"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help=HELP,
        description=HELP
        + ". Example: pmalopti pretrain --config configs/pretrain_tiny.yaml -o runs/tiny",
    )
    add_output(p, metavar="RUN", help="run folder (checkpoints, metrics.jsonl, report/)")
    add_training(p)
    p.add_argument(
        "--report",
        metavar="RUN",
        help="only (re)write the PMA report of a finished run and print its table",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from pmalopti.commands._run_config import load_run_config
    from pmalopti.config import load_config
    from pmalopti.errors import UserError
    from pmalopti.lm.pretrain import PretrainConfig, pretrain, report
    from pmalopti.runtime.stop import Interrupted

    if args.report:
        run_dir = Path(args.report)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a pretrain run folder (no config.yaml)")
        cfg = load_config(PretrainConfig, args.config or run_dir / "config.yaml", args.overrides)
        paths = report(run_dir, cfg)
        print(paths["markdown"].read_text(encoding="utf-8"))
        print(f"figure: {paths['figure']}", file=sys.stderr)
        return 0
    if not args.output:
        raise UserError("-o/--output RUN is required (or --report RUN)")
    cfg, run_dir = load_run_config(PretrainConfig, args, args.output)
    try:
        result = pretrain(cfg, run_dir, resume=args.resume, force=args.force)
    except Interrupted as exc:
        print(f"pmalopti pretrain: {exc}", file=sys.stderr)
        return 130
    print(
        f"trained to step {result.step} ({result.tokens} tokens); last checkpoint {result.last_checkpoint}"
    )
    if cfg.report.enabled:
        print((run_dir / "report" / "pma.md").read_text(encoding="utf-8"))
    return 0
