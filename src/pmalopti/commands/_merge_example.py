"""`pmalopti merge --example`: a tiny constant-LR training run made locally, then merged.

It shows PMA's claim on a small scale (arXiv 2505.12082, Sec. 4.1): in the stable phase of a
WSD schedule the weights oscillate around a better point, and averaging the last checkpoints
lands closer to it than the newest one. Everything is built here: tokenizer, model, data.
"""

from __future__ import annotations

import json
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


def run_example(out: Path, *, force: bool) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    t0 = time.perf_counter()
    out = out.resolve()
    threads = torch.get_num_threads()
    bars = hf_logging.is_progress_bar_enabled()
    # A model this small trains fastest on one thread; more only add synchronisation.
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar per checkpoint
    try:
        return _run(out, force=force, t0=t0)
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def _run(out: Path, *, force: bool, t0: float) -> int:
    import torch

    from pmalopti.models.tiny import build_tiny_model, build_tokenizer, tiny_config
    from pmalopti.pma.select import discover_checkpoints, format_table, select_checkpoints
    from pmalopti.pma.streaming import merge_checkpoints
    from pmalopti.pma.weights import merge_weights
    from pmalopti.runtime.fs import atomic_dir

    with atomic_dir(out, force=force) as tmp:
        tok = build_tokenizer(_texts(0, 500), vocab_size=300)
        cfg = tiny_config(
            len(tok),
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = build_tiny_model(cfg, seed=0)

        def batch(texts: list[str]) -> torch.Tensor:
            ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
            width = max(map(len, ids))
            return torch.tensor([x + [tok.eos_token_id] * (width - len(x)) for x in ids])

        eval_ids = batch(_texts(1, 256))  # (256, T) held-out lines

        def eval_loss(m) -> float:
            m.eval()
            with torch.no_grad():
                return float(m(input_ids=eval_ids, labels=eval_ids).loss)

        # Constant high LR, no decay: the "stable" phase where PMA helps most.
        opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
        rng = random.Random(2)
        run_dir = tmp / "run"
        losses: dict[str, float] = {}
        model.train()
        for step in range(1, STEPS + 1):
            ids = batch(_texts(rng.randrange(1 << 30), 16))  # (16, T)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step % SAVE_EVERY == 0:
                ck = run_dir / f"checkpoint-{step}"
                model.save_pretrained(ck)
                tok.save_pretrained(ck)
                tokens = step * int(ids.numel())
                (ck / "trainer_state.json").write_text(
                    json.dumps({"global_step": step, "num_input_tokens_seen": tokens})
                )
                losses[ck.name] = eval_loss(model)
                model.train()
    # The run folder is complete (renamed into place); the merge reads it from there.
    ckpts = select_checkpoints(discover_checkpoints(out / "run"), last=MERGE_LAST).checkpoints
    weights = merge_weights("sma", len(ckpts))
    print(
        f"pmalopti merge --example: trained a tiny Llama ({model.num_parameters():,} "
        f"parameters) for {STEPS} steps at a constant LR, saving every {SAVE_EVERY} steps"
    )
    print(f"PMA merge: sma, {len(ckpts)} checkpoints (oldest first)")
    print(format_table(ckpts, weights))
    sys.stdout.flush()
    merged = merge_checkpoints(
        ckpts, weights, out / "merged", progress=False, metadata={"method": "sma"}
    )
    from transformers import AutoModelForCausalLM

    merged_loss = eval_loss(AutoModelForCausalLM.from_pretrained(merged))
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
