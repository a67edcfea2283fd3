"""`pmalopti demo`: pre-training with online PMA, PMA-init SFT, GRPO vs AR + Lopti, and a report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from pmalopti.commands._common import add_config, add_output

HELP = "run the whole system on a tiny model on CPU (about 10 minutes; --smoke: 1-2 minutes)"
DESCRIPTION = """\
Runs three stages on a tiny model, locally (no downloads, no GPU) and writes DIR/REPORT.md.
Sizes: configs/demo_full.yaml (--smoke: configs/demo_smoke.yaml on top of it).
  1. pre-train with a Warmup-Stable-Decay schedule and online PMA: validation loss of the live
     model vs SMA / WMA / EMA merges vs the annealed model;
  2. PMA-init: SFT on arithmetic from the merged weights, beside SFT from the latest checkpoint;
  3. GRPO vs GRPO + AR + Lopti from the same SFT model and seed, with accuracy per difficulty and
     the token-probability bucket shares.

examples:
  pmalopti demo                                  # full size into ./pmalopti-demo
  pmalopti demo --smoke -o /tmp/demo            # a 1-2 minute run, little learning
  pmalopti demo --seed 1 --set grpo.train.steps=80 -o demo-seed1
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output(
        p,
        metavar="DIR",
        default="pmalopti-demo",
        old=("--out",),
        help="output folder (default: ./pmalopti-demo); must be empty or absent",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of every stage (default 0)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes: finishes in 1-2 minutes, learns little"
    )
    add_config(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue DIR after an interruption: finished stages are kept, the rest re-run; "
        "uses DIR/demo_config.yaml unless --config is given",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from pmalopti.commands._run_config import check_same_experiment
    from pmalopti.config import ConfigError, load_config
    from pmalopti.demo.config import DemoConfig, load_demo_config
    from pmalopti.demo.run import run_demo

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    saved = Path(args.output) / "demo_config.yaml"
    if args.resume and not saved.is_file():
        raise ConfigError(f"--resume: {saved} does not exist; is {args.output} a demo folder?")
    if args.resume and args.config is None:
        cfg = load_config(DemoConfig, saved, overrides)
    else:
        cfg = load_demo_config(args.config, overrides, smoke=args.smoke)
    if args.resume:
        check_same_experiment(load_config(DemoConfig, saved), cfg, allowed=())
    argv = ["pmalopti", "demo", "-o", args.output]
    argv += ["--smoke"] * args.smoke + (["--seed", str(args.seed)] if args.seed is not None else [])
    argv += (["--config", args.config] if args.config else []) + [
        x for o in args.overrides for x in ("--set", o)
    ]
    command = shlex.join(argv)
    size = "smoke" if args.smoke else "full"
    run_demo(cfg, args.output, force=args.force, resume=args.resume, size=size, command=command)
    return 0
