"""`pmalopti merge --example`: a tiny constant-LR training run made locally, then merged.

It shows PMA's claim on a small scale (arXiv 2505.12082, Sec. 4.1): in the stable phase of a
WSD schedule the weights oscillate around a better point, and averaging the last checkpoints
lands closer to it than the newest one. The run is an ordinary `pmalopti pretrain` run (its
tokenizer, model and checkpoints), on arithmetic lines made here.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

STEPS = 160
SAVE_EVERY = 20
MERGE_LAST = 4


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{a} + {b} = {a + b}. {a} * 2 = {2 * a}."
        for a, b in ((rng.randrange(100), rng.randrange(100)) for _ in range(n))
    ]


def example_config(texts: Path):
    """The run: `pmalopti pretrain` at a constant high LR (no warmup, no decay) on `texts`."""
    from pmalopti.config import load_config
    from pmalopti.lm.pretrain import PretrainConfig

    return load_config(
        PretrainConfig,
        None,
        [
            f"data.path={texts}",
            "data.block_size=32",
            "data.val_fraction=0.1",
            "model.hidden_size=64",
            "model.num_layers=2",
            "model.vocab_size=300",
            "optim.lr=3e-2",
            "optim.weight_decay=0",
            "schedule.warmup_steps=0",
            "schedule.decay_steps=0",
            f"train.steps={STEPS}",
            "train.batch_size=16",
            f"train.save_every={SAVE_EVERY}",
            f"train.eval_every={SAVE_EVERY}",
            # A model this small trains fastest on one thread; more only add synchronisation.
            "train.threads=1",
            "train.progress=false",
            "report.enabled=false",
        ],
    )


def run_example(out: Path, *, force: bool) -> int:
    import torch

    from pmalopti.lm.evaluate import blocks_loss
    from pmalopti.lm.pretrain import pretrain, val_blocks_of, write_jsonl
    from pmalopti.pma.select import discover_checkpoints, format_table, select_checkpoints
    from pmalopti.pma.streaming import merge_checkpoints
    from pmalopti.pma.weights import merge_weights
    from pmalopti.runtime.fs import atomic_dir
    from pmalopti.runtime.hf import load_model, load_tokenizer, quiet_transformers
    from pmalopti.runtime.runlog import read_metrics
    from pmalopti.runtime.threads import torch_threads

    t0 = time.perf_counter()
    out = out.resolve()
    with atomic_dir(out, force=force) as tmp:
        write_jsonl(tmp / "texts.jsonl", _texts(0, 2000))
        cfg = example_config(tmp / "texts.jsonl")
        pretrain(cfg, tmp / "run")
    # The run folder is complete (renamed into place); the merge reads it from there.
    losses = {
        f"checkpoint-{r['step']}": r["val_loss"]
        for r in read_metrics(out / "run")
        if "val_loss" in r
    }
    ckpts = select_checkpoints(discover_checkpoints(out / "run"), last=MERGE_LAST).checkpoints
    weights = merge_weights("sma", len(ckpts))
    n_params = sum(p.numel() for p in load_model(ckpts[-1].path).parameters())
    print(
        f"pmalopti merge --example: trained a tiny Llama ({n_params:,} parameters) with "
        f"`pmalopti pretrain` for {STEPS} steps at a constant LR, saving every {SAVE_EVERY} steps"
    )
    print(f"PMA merge: sma, {len(ckpts)} checkpoints (oldest first)")
    print(format_table(ckpts, weights))
    sys.stdout.flush()
    merged = merge_checkpoints(
        ckpts, weights, out / "merged", progress=False, metadata={"method": "sma"}
    )
    with torch_threads(1), quiet_transformers():
        val = val_blocks_of(out / "run", load_tokenizer(merged), 32, cfg.data.max_val_blocks)
        merged_loss = blocks_loss(load_model(merged), val, 16, torch.device("cpu"))
    print()
    print("held-out loss (lower is better):")
    for name, loss in losses.items():
        print(f"  {name:<18} {loss:.4f}")
    newest = list(losses)[-1]
    print(f"  {'PMA (sma, last ' + str(MERGE_LAST) + ')':<18} {merged_loss:.4f}")
    gain = losses[newest] - merged_loss
    verdict = "lower" if gain > 0 else "higher"
    print(
        f"PMA's loss is {abs(gain):.4f} nats {verdict} than the newest checkpoint's "
        f"(perplexity x{math.exp(-gain):.3f}); {time.perf_counter() - t0:.1f} s in all"
    )
    print(f"\nrun folder: {out / 'run'}\nmerged model: {out / 'merged'}")
    print(
        f"try: pmalopti merge --run-dir {out / 'run'} --last 4 --method ema --alpha 0.2 "
        f"-o {out / 'merged-ema'}"
    )
    return 0
