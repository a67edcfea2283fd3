"""`pmalopti demo`: pre-training with online PMA, PMA-init SFT, GRPO vs AR + Lopti, and a report."""

from __future__ import annotations

import argparse
import shlex

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
    p.set_defaults(func=run)


def run(args) -> int:
    from pmalopti.demo.config import load_demo_config
    from pmalopti.demo.run import run_demo

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_demo_config(args.config, overrides, smoke=args.smoke)
    argv = ["pmalopti", "demo", "-o", args.output]
    argv += ["--smoke"] * args.smoke + (["--seed", str(args.seed)] if args.seed is not None else [])
    argv += (["--config", args.config] if args.config else []) + [
        x for o in args.overrides for x in ("--set", o)
    ]
    command = shlex.join(argv)
    run_demo(
        cfg, args.output, force=args.force, size="smoke" if args.smoke else "full", command=command
    )
    return 0
