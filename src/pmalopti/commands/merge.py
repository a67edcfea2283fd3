"""`pmalopti merge`: PMA — average checkpoints of a pre-training run into one model (streaming)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "average checkpoints along a training run (PMA: SMA, EMA, WMA) into one HF model"

EXAMPLES = """examples:
  pmalopti merge --example                                   # tiny run made locally, then merged
  pmalopti merge --run-dir runs/tiny --last 10 -o merged     # SMA of the newest 10 checkpoints
  pmalopti merge --run-dir runs/tiny --last 4 --every 2 --method ema --alpha 0.2 -o merged
  pmalopti merge --run-dir runs/tiny --until 3000 --last 5 -o recover   # before a loss spike
  pmalopti merge ckpt-a ckpt-b model.safetensors --weights 1,2,3 --dtype bf16 -o merged
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help=HELP,
        description=HELP + ". Inputs are given oldest first.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        metavar="CKPT",
        help="model folders or .safetensors files, oldest first",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="output model folder")
    sel = p.add_argument_group("selecting checkpoints from a run folder")
    sel.add_argument(
        "--run-dir", metavar="RUN", help="folder of checkpoint-<step> or step<N> sub-folders"
    )
    sel.add_argument(
        "--last", type=int, metavar="N", help="merge the newest N selected (paper: 10)"
    )
    sel.add_argument(
        "--every",
        type=int,
        metavar="K",
        help="every K-th checkpoint counting back from the newest (interval = K x save interval)",
    )
    sel.add_argument(
        "--every-tokens",
        metavar="V",
        help="checkpoints at least V tokens apart, e.g. 4B (needs num_input_tokens_seen in "
        "trainer_state.json)",
    )
    sel.add_argument(
        "--until", type=int, metavar="STEP", help="only checkpoints at or before STEP (loss spike)"
    )
    how = p.add_argument_group("weights and output")
    how.add_argument(
        "--method",
        choices=("sma", "ema", "wma"),
        help="sma: equal weights (default); wma: weight i/sum; ema: recursion with --alpha",
    )
    how.add_argument("--alpha", type=float, help="EMA weight of the newest, in (0, 1] (paper 0.2)")
    how.add_argument(
        "--weights", metavar="W1,W2,...", help="explicit weights, oldest first (normalised)"
    )
    how.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        help="output dtype of floating tensors (default: as stored)",
    )
    how.add_argument(
        "--shard-size", default="5GB", metavar="SIZE", help="max shard size (default 5GB)"
    )
    how.add_argument("--force", action="store_true", help="replace OUT if it exists")
    how.add_argument("--dry-run", action="store_true", help="print the selection, merge nothing")
    how.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none when stderr is not a terminal)",
    )
    how.add_argument(
        "--example",
        action="store_true",
        help="train a tiny model for a few seconds, save checkpoints, merge them (OUT defaults "
        "to ./pmalopti-merge-example)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from pmalopti.errors import UserError
    from pmalopti.pma.select import (
        checkpoints_from_paths,
        discover_checkpoints,
        format_table,
        parse_count,
        select_checkpoints,
    )
    from pmalopti.pma.weights import merge_weights, normalize_weights

    if args.example:
        if args.checkpoints or args.run_dir:
            raise UserError("--example makes its own checkpoints; give no CKPT or --run-dir")
        from pmalopti.commands._merge_example import run_example

        return run_example(Path(args.output or "pmalopti-merge-example"), force=args.force)

    if args.run_dir and args.checkpoints:
        raise UserError("give checkpoints or --run-dir, not both")
    if args.run_dir:
        ckpts = discover_checkpoints(args.run_dir)
    elif args.checkpoints:
        ckpts = checkpoints_from_paths(args.checkpoints)
    else:
        raise UserError("give checkpoints to merge (oldest first), --run-dir RUN, or --example")
    every_tokens = parse_count(args.every_tokens, "--every-tokens") if args.every_tokens else None
    ckpts = select_checkpoints(
        ckpts, last=args.last, every=args.every, every_tokens=every_tokens, until=args.until
    )

    if args.weights is not None:
        if args.method or args.alpha is not None:
            raise UserError("--weights replaces --method/--alpha; give one or the other")
        try:
            raw = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise UserError(
                f"--weights: expected numbers like 1,2,3, got {args.weights!r}"
            ) from None
        if len(raw) != len(ckpts):
            raise UserError(f"--weights has {len(raw)} values for {len(ckpts)} checkpoints")
        method, weights = "explicit", normalize_weights(raw)
    else:
        method = args.method or "sma"
        if args.alpha is not None and method != "ema":
            raise UserError(f"--alpha is only used by --method ema, not {method}")
        weights = merge_weights(method, len(ckpts), args.alpha)

    shard_size = parse_count(args.shard_size, "--shard-size")
    if shard_size < 1:
        raise UserError("--shard-size must be positive")
    alpha = f", alpha={args.alpha}" if method == "ema" else ""
    print(f"PMA merge: {method}{alpha}, {len(ckpts)} checkpoints (oldest first)")
    print(format_table(ckpts, weights))
    sys.stdout.flush()
    if args.dry_run:
        return 0
    if not args.output:
        raise UserError("-o/--output OUT is required (or use --dry-run)")

    from pmalopti.pma.streaming import merge_checkpoints

    merge_checkpoints(
        ckpts,
        weights,
        args.output,
        dtype=args.dtype,
        shard_size=shard_size,
        force=args.force,
        progress=not args.no_progress and sys.stderr.isatty(),
        metadata={
            "method": method,
            "alpha": args.alpha,
            "selection": {
                "run_dir": str(Path(args.run_dir).resolve()) if args.run_dir else None,
                "last": args.last,
                "every": args.every,
                "every_tokens": every_tokens,
                "until": args.until,
            },
        },
    )
    print(f"merged model: {Path(args.output).resolve()}")
    return 0
