"""`pmalopti merge`: PMA — average checkpoints of a pre-training run into one model (streaming)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pmalopti.commands._common import add_force, add_merge_method, add_output

HELP = (
    "average checkpoints along a training run (PMA: SMA, EMA, WMA) into one model: HF folders, "
    "or DCP checkpoints of torchtitan, OLMo-core, Megatron, accelerate"
)

EXAMPLES = """examples:
  pmalopti merge --example                                   # tiny run made locally, then merged
  pmalopti merge --run-dir runs/tiny --last 10 -o merged     # SMA of the newest 10 checkpoints
  pmalopti merge --run-dir runs/tiny --last 4 --every-steps 200 --method ema --alpha 0.2 -o merged
  pmalopti merge --run-dir runs/tiny --before-spike 3000 --last 5 -o recover  # spike logged at 3000
  pmalopti merge ckpt-a ckpt-b model.safetensors --weights 1,2,3 --as-given --dtype bf16 -o merged
  pmalopti merge --run-dir outputs/checkpoint --last 10 -o merged-dcp  # torchtitan step-N (DCP)
  pmalopti merge --run-dir ckpts --last 4 --keep-non-model -o iter_0004000 # Megatron torch_dist
"""


def merge_spec_from_args(args):
    """The parsed `--method/--alpha/--weights` as a `MergeSpec` (UserError when invalid)."""
    from pmalopti.errors import UserError
    from pmalopti.pma.spec import MergeSpec

    try:
        return MergeSpec.from_options(args.method, args.alpha, getattr(args, "weights", None))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help=HELP,
        description=HELP + ". Inputs are ordered by training step (oldest first).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        metavar="CKPT",
        help="model folders, .safetensors files or DCP checkpoints (docs/merging-real-runs.md), "
        "ordered by their step where it is known",
    )
    add_output(p, force=False, help="output model folder")
    p.add_argument(
        "--as-given",
        action="store_true",
        help="inputs whose step cannot be read are oldest first as listed (needed for ema/wma)",
    )
    sel = p.add_argument_group("selecting checkpoints from a run folder")
    sel.add_argument(
        "--run-dir", metavar="RUN", help="folder of checkpoint-<step> or step<N> sub-folders"
    )
    sel.add_argument(
        "--last", type=int, metavar="N", help="merge the newest N selected (paper: 10)"
    )
    sel.add_argument(
        "--every-steps",
        type=int,
        metavar="V",
        help="checkpoints exactly V steps apart, counting back from the newest; a missing one "
        "is an error (see --nearest)",
    )
    sel.add_argument(
        "--every-tokens",
        metavar="V",
        help="checkpoints exactly V tokens apart, e.g. 4B (needs num_input_tokens_seen in "
        "trainer_state.json)",
    )
    sel.add_argument(
        "--nearest",
        action="store_true",
        help="take the nearest checkpoint where one V apart is missing (the table shows it)",
    )
    sel.add_argument("--every", type=int, metavar="K", help=argparse.SUPPRESS)  # deprecated
    sel.add_argument("--until", type=int, metavar="STEP", help="only checkpoints at steps <= STEP")
    sel.add_argument(
        "--before-spike",
        type=int,
        metavar="S",
        help="only checkpoints before a loss spike logged at step S (steps <= S-2, as recover)",
    )
    how = p.add_argument_group("weights and output")
    add_merge_method(how, default=None)
    how.add_argument(
        "--weights", metavar="W1,W2,...", help="explicit weights, oldest first (normalised)"
    )
    how.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        help="output dtype of floating tensors (default: the newest checkpoint's)",
    )
    how.add_argument(
        "--shard-size", default="5GB", metavar="SIZE", help="max shard size (default 5GB)"
    )
    how.add_argument(
        "--read-ahead",
        metavar="SIZE",
        help="ask the kernel to prefetch SIZE bytes ahead of each read, per input file (e.g. "
        "16MiB): keeps large reads in flight on network filesystems (default: its readahead)",
    )
    dcp = p.add_argument_group(
        "distributed checkpoints (torchtitan, OLMo-core, Megatron, accelerate)"
    )
    dcp.add_argument(
        "--format",
        choices=("dcp", "hf"),
        help="output of a DCP merge: dcp (default; same keys and chunks, loadable with dcp.load) "
        "or hf (safetensors folder, where the keys map to a HF model)",
    )
    dcp.add_argument(
        "--keep-non-model",
        action="store_true",
        help="copy optimizer, scheduler, data-loader and step entries from the newest checkpoint "
        "(for a resume; never averaged); default: dropped",
    )
    dcp.add_argument(
        "--model-prefix",
        metavar="P1,P2",
        help="model keys are those starting with these prefixes (default: per layout)",
    )
    dcp.add_argument(
        "--hf-config", metavar="DIR", help="--format hf: HF config (and tokenizer) folder"
    )
    add_force(how)
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
    from pmalopti.pma.select import choose_checkpoints, format_table, parse_count
    from pmalopti.pma.spike import until_before_spike

    if args.example:
        if args.checkpoints or args.run_dir:
            raise UserError("--example makes its own checkpoints; give no CKPT or --run-dir")
        from pmalopti.commands._merge_example import run_example

        return run_example(Path(args.output or "pmalopti-merge-example"), force=args.force)

    spec = merge_spec_from_args(args)
    if args.until is not None and args.before_spike is not None:
        raise UserError("give --until or --before-spike, not both")
    until = args.until
    if args.before_spike is not None:
        until = until_before_spike(args.before_spike)
    every_tokens = parse_count(args.every_tokens, "--every-tokens") if args.every_tokens else None
    sel = choose_checkpoints(
        run_dir=args.run_dir,
        paths=args.checkpoints,
        order_sensitive=spec.order_sensitive,
        as_given=args.as_given,
        last=args.last,
        every_steps=args.every_steps,
        every_tokens=every_tokens,
        every=args.every,
        until=until,
        nearest=args.nearest,
    )
    ckpts = sel.checkpoints
    weights = spec.merge_weights(len(ckpts))
    from pmalopti.pma.dcp_layout import detect_all

    dcp_ckpts = detect_all([c.path for c in ckpts])
    if dcp_ckpts is None and (args.format or args.keep_non_model or args.model_prefix):
        raise UserError("--format, --keep-non-model and --model-prefix are for DCP checkpoints")
    shard_size = parse_count(args.shard_size, "--shard-size")
    if shard_size < 1:
        raise UserError("--shard-size must be positive")
    read_ahead = parse_count(args.read_ahead, "--read-ahead") if args.read_ahead else None
    print(f"PMA merge: {spec}, {len(ckpts)} checkpoints (oldest first)")
    print(format_table(ckpts, weights, sel.targets, sel.key))
    for note in sel.notes:
        print(f"note: {note}")
    sys.stdout.flush()
    if args.dry_run:
        return 0
    if not args.output:
        raise UserError("-o/--output OUT is required (or use --dry-run)")

    record = {
        "method": spec.method,
        "alpha": spec.alpha,
        "selection": {
            "run_dir": str(Path(args.run_dir).resolve()) if args.run_dir else None,
            "last": args.last,
            "every_steps": args.every_steps,
            "every": args.every,
            "every_tokens": every_tokens,
            "nearest": args.nearest,
            "until": until,
            "targets": sel.targets,
        },
    }
    if dcp_ckpts is not None:
        from pmalopti.pma.dcp_merge import merge_dcp

        out = merge_dcp(
            dcp_ckpts,
            weights,
            args.output,
            dtype=args.dtype,
            keep_non_model=args.keep_non_model,
            model_prefix=args.model_prefix.split(",") if args.model_prefix else None,
            out_format=args.format or "dcp",
            hf_config=args.hf_config,
            shard_size=shard_size,
            force=args.force,
            progress=not args.no_progress,
            metadata=record,
            tokens=[c.tokens for c in ckpts],
        )
        print(f"merged checkpoint ({args.format or 'dcp'}, {dcp_ckpts[-1].layout}): {out}")
        return 0
    if "numpy" not in sys.modules:
        # The merge calls no BLAS; numpy's OpenBLAS would start a thread per core at import,
        # spinning for a while on the cores the merge threads need (~50 ms of a 1 s merge).
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from pmalopti.pma.streaming import merge_checkpoints

    merge_checkpoints(
        ckpts,
        weights,
        args.output,
        dtype=args.dtype,
        shard_size=shard_size,
        force=args.force,
        progress=not args.no_progress and sys.stderr.isatty(),
        read_ahead=read_ahead,
        metadata=record,
    )
    print(f"merged model: {Path(args.output).resolve()}")
    return 0
