"""Overhead of `OnlineAverager` on a tiny pre-training run (issue 3's target: < 2% at V >= 10).

Runs `pmalopti pretrain`'s own training loop (`pmalopti.lm.loop.train`, WSD schedule, AdamW,
built-in grammar corpus) on a few-M-parameter Llama-style model, without the averager and with
it at V in {1, 10, 50} (N = 10, a merge every M = N*V steps), in interleaved repeats so that a
busy machine slows all variants alike. It prints two ratios per V:

- `loop`: mean wall time per step (hook to hook, so it includes the averager) with / without;
  noisy on a shared machine, since the differences sought are ~1%.
- `inside`: time spent inside `averager.step()` / mean step time of the baseline; the
  averager's own cost, measured directly and so much less noisy.

    python benchmarks/online_overhead.py                      # CPU, ~3.5M params
    python benchmarks/online_overhead.py --device cuda --accumulators same
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every variant")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 10, 50], help="V values")
    p.add_argument("--n", type=int, default=10, help="N, snapshots per merge")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--accumulators", default="cpu", choices=["cpu", "same"], help="OnlineAverager device"
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the means")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from pmalopti.lm.data import tokenize_blocks
    from pmalopti.lm.loop import train
    from pmalopti.lm.pretrain import (
        PretrainConfig,
        build_model_and_tokenizer,
        corpus,
        make_batches,
    )
    from pmalopti.pma.online import OnlineAverager
    from pmalopti.runtime.hf import quiet_transformers

    cfg = PretrainConfig()
    cfg.model.hidden_size, cfg.model.num_layers = args.hidden, args.layers
    cfg.data.num_docs, cfg.data.block_size = 4000, args.block_size
    cfg.train.steps, cfg.train.batch_size = args.steps, args.batch_size
    cfg.train.save_every, cfg.train.eval_every = 10**9, 0  # time training, not checkpoints
    cfg.train.progress, cfg.train.device = False, args.device
    cfg.schedule.warmup_steps, cfg.schedule.decay_steps = 10, 0
    train_texts, _ = corpus(cfg)
    model0, tok = build_model_and_tokenizer(cfg, train_texts)
    blocks = tokenize_blocks(train_texts, tok, cfg.data.block_size)
    n_params = sum(p.numel() for p in model0.parameters())
    print(
        f"model: {n_params / 1e6:.2f}M params, batch {args.batch_size}x{args.block_size} tokens, "
        f"{args.steps} steps/run, device {args.device}, accumulators {args.accumulators}, "
        f"torch threads {args.threads}, N={args.n}, M=N*V",
        file=sys.stderr,
    )

    def run(interval: int | None) -> tuple[float, float]:
        """(mean wall time per step, mean time per step inside averager.step())."""
        model = copy.deepcopy(model0)
        avg = None
        if interval is not None:
            avg = OnlineAverager(
                model, method="sma", n=args.n, interval=interval, device=args.accumulators
            )
        stamps: list[float] = []
        inside = 0.0

        def hook(step: int, rec: dict) -> None:
            nonlocal inside
            if avg is not None:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                avg.step(step)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if step > args.skip:
                    inside += time.perf_counter() - t
            if args.device == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as tmp, quiet_transformers():
            train(
                model,
                tok,
                batches=make_batches(blocks, cfg.train, cfg.seed),
                run_dir=Path(tmp),
                train_cfg=cfg.train,
                optim_cfg=cfg.optim,
                schedule_cfg=cfg.schedule,
                hooks=(hook,),
            )
        deltas = [b - a for a, b in zip(stamps[args.skip :], stamps[args.skip + 1 :], strict=False)]
        return statistics.fmean(deltas), inside / len(deltas)

    variants: list[int | None] = [None, *args.intervals]
    results: dict[int | None, list[tuple[float, float]]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants:
            results[v].append(run(v))
            print(
                f"repeat {r + 1}/{args.repeats} V={v}: {results[v][-1][0] * 1e3:.1f} ms/step",
                file=sys.stderr,
            )

    base = statistics.median(t for t, _ in results[None])
    print(
        "\n| V | step time (ms) | loop ratio | time in averager.step per step (ms) | inside ratio |"
    )
    print("|---|---|---|---|---|")
    print(f"| no averager | {base * 1e3:.1f} | 1.000 | - | - |")
    for v in args.intervals:
        t = statistics.median(x for x, _ in results[v])
        inside = statistics.median(x for _, x in results[v])
        print(
            f"| {v} | {t * 1e3:.1f} | {t / base:.3f} | {inside * 1e3:.2f} | {1 + inside / base:.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
