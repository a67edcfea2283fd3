"""Cost of AR and Lopti on the update phase of a GRPO step (CPU, tiny model).

    python benchmarks/grpo_update_overhead.py [--reps 7] [--threads 1]

One fixed rollout batch (64 sequences of 32 sampled tokens from a tiny Llama, hidden 128,
4 layers), π_old from the policy, random group advantages. The update phase is what
`GRPOTrainer.train_step` does after the old log-probs: `reweight_advantages` (AR) and
`update_policy` (2 minibatches of 32, one optimizer step each; Lopti sweeps them twice).
Each variant starts from the same weights and a fresh AdamW; variants are interleaved and
timed `--reps` times, and the fastest run is reported (the least disturbed by other load). Times are process CPU time
(`time.process_time`, one torch thread), which a busy shared machine disturbs far less than
wall-clock time. Targets: AR < 2 % over the baseline;
Lopti ≤ 2.1× (it does two full sweeps by design).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from pmalopti.grpo.config import AlgoConfig
from pmalopti.grpo.rollout import response_logprobs, sample_loop, tokenize_prompts
from pmalopti.grpo.update import UpdateBatch, update_policy
from pmalopti.models.tiny import tiny_model_and_tokenizer
from pmalopti.rl import group_advantages, reweight_advantages

VARIANTS = {
    "GRPO (α=0, η unset)": (0.0, None),
    "AR (α=0.3)": (0.3, None),
    "Lopti (η=0.5)": (0.0, 0.5),
    "AR + Lopti": (0.3, 0.5),
}


def setup():
    model, tok = tiny_model_and_tokenizer(
        seed=0, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2
    )
    with torch.no_grad():  # peaked next-token distributions, so both Lopti groups are populated
        model.model.norm.weight.mul_(8.0)
    prompts = [f"{a} + {b} =" for a in range(8) for b in range(8)]
    ids, mask = tokenize_prompts(tok, prompts, 64, "cpu")
    g = torch.Generator().manual_seed(0)
    roll = sample_loop(model, tok, ids, mask, max_new_tokens=32, temperature=1.0, generator=g)
    with torch.no_grad():
        old, _ = response_logprobs(model, ids, mask, roll.response_ids, roll.response_mask)
    adv = group_advantages(torch.randn(64, generator=g), 8)
    return model, roll, old, adv


def time_update(model, roll, old, adv, alpha, eta) -> tuple[float, int]:
    m = copy.deepcopy(model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    algo = AlgoConfig(alpha=alpha, eta=eta, minibatch_size=32, micro_batch_size=32)
    t0 = time.process_time()
    tok_adv = reweight_advantages(adv, old, alpha)  # (B, R)
    batch = UpdateBatch(
        roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask, old, tok_adv
    )
    metrics = update_policy(m, opt, batch, algo, temperature=1.0, max_grad_norm=1.0)
    return time.process_time() - t0, int(metrics["actor/optimizer_steps"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, roll, old, adv = setup()
    low = float((old.exp() < 0.5)[roll.response_mask].float().mean())
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    steps: dict[str, int] = {}
    for alpha, eta in VARIANTS.values():  # warm-up
        time_update(model, roll, old, adv, alpha, eta)
    for _ in range(a.reps):
        for k, (alpha, eta) in VARIANTS.items():
            t, steps[k] = time_update(model, roll, old, adv, alpha, eta)
            times[k].append(t)
    base = min(times["GRPO (α=0, η unset)"])
    # AR's own work, alone: the update code is the same for every α, only the values differ.
    c0 = time.process_time()
    for _ in range(1000):
        reweight_advantages(adv, old, 0.3)
    ar_alone = (time.process_time() - c0) / 1000
    print(
        f"update phase, tiny Llama (hidden 128, 4 layers), 64 sequences × 32 tokens, "
        f"Lopti low-token share {low:.2f}, {a.reps} interleaved reps (fastest), "
        f"threads {a.threads}\n"
    )
    print("| variant | optimizer steps | update phase (CPU s) | vs GRPO |")
    print("|---|---|---|---|")
    for k in VARIANTS:
        best = min(times[k])
        print(f"| {k} | {steps[k]} | {best:.4f} | {best / base:.3f}× |")
    print(
        f"\nAR alone (reweight_advantages on (64, 32)): {ar_alone * 1e6:.1f} µs CPU, "
        f"{100 * ar_alone / base:.3f} % of the GRPO update phase"
    )


if __name__ == "__main__":
    main()
