"""`pmalopti recover`: find a loss spike, merge the checkpoints before it, optionally resume."""

from __future__ import annotations

import sys
from pathlib import Path

from pmalopti.commands._common import add_config, add_force, add_merge_method, add_output

HELP = "recover from a loss spike: merge the N checkpoints before it (PMA-init) and resume"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "recover",
        help=HELP,
        description=HELP
        + ". Example: pmalopti recover --run-dir runs/spiky --last 4 -o runs/spiky-pma --resume",
    )
    p.add_argument("--run-dir", required=True, metavar="RUN", help="a pmalopti pretrain run folder")
    p.add_argument(
        "--spike-step",
        type=int,
        metavar="S",
        help="the spike's step (default: detect it in RUN/metrics.jsonl)",
    )
    p.add_argument(
        "--last",
        type=int,
        required=True,
        metavar="N",
        help="merge the N newest checkpoints before the spike (steps <= S-2: checkpoint S-1 "
        "holds the weights that produced the spiking loss)",
    )
    add_output(p, required=True, force=False, help="merged checkpoint folder")
    add_merge_method(p)
    p.add_argument(
        "--factor",
        type=float,
        default=2.0,
        help="spike rule: loss > FACTOR x rolling median (default 2.0)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=20,
        help="spike rule: median of the previous WINDOW logged losses (default 20)",
    )
    p.add_argument(
        "--after",
        type=int,
        metavar="STEP",
        help="spike rule: only judge steps after STEP (default: the run's warmup length)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue training from the merged weights"
    )
    p.add_argument(
        "--resume-dir", metavar="DIR", help="run folder for --resume (default: OUT-resumed)"
    )
    p.add_argument(
        "--optimizer",
        choices=["fresh", "newest"],
        default="fresh",
        help="--resume: fresh AdamW state (PMA-init, default) or the newest merged checkpoint's",
    )
    add_config(p)  # --resume: the run's config (default RUN/config.yaml) and --set overrides
    add_force(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pmalopti.commands.merge import merge_spec_from_args
    from pmalopti.lm.recover import merge_before_spike, resume_from_merge
    from pmalopti.runtime.stop import Interrupted

    spec = merge_spec_from_args(args)  # validated before any work
    rec = merge_before_spike(
        args.run_dir,
        args.output,
        last=args.last,
        spike_step=args.spike_step,
        after=args.after,
        factor=args.factor,
        window=args.window,
        method=spec,
        force=args.force,
    )
    if rec.spike is not None:
        print(rec.spike.describe())
    else:
        print(f"loss spike at step {rec.spike_step} (given)")
    listing = ", ".join(
        f"checkpoint-{s} ({w:.3f})" for (s, _), w in zip(rec.merged, rec.weights, strict=True)
    )
    for note in rec.notes:
        print(f"note: {note}")
    print(f"merged {len(rec.merged)} checkpoints with {spec}: {listing} -> {rec.out}")
    if not args.resume:
        return 0
    resume_dir = Path(args.resume_dir or f"{rec.out}-resumed")
    try:
        result = resume_from_merge(
            rec,
            args.run_dir,
            resume_dir,
            optimizer=args.optimizer,
            config=args.config,
            overrides=args.overrides,
            force=args.force,
        )
    except Interrupted as exc:
        print(f"pmalopti recover: {exc}", file=sys.stderr)
        return 130
    print(f"resumed from step {rec.merged[-1][0]} to step {result.step} in {resume_dir}")
    return 0
