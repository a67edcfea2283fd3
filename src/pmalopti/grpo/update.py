"""The update phase of one GRPO step: minibatch sweeps, micro-batch accumulation, Lopti passes.

The maths (advantages, AR, Lopti masks, loss, KL, aggregation) comes from `pmalopti.rl`; this
module only schedules it, as the official code does (arXiv 2505.12929 §4.2, docs/design.md):

    for pass in lopti_passes(...):          # one pass, or "low" then "high"
        for epoch in range(ppo_epochs):
            for minibatch in rollout batch:  # one optimizer step each
                for micro in minibatch:      # gradient accumulation
                    policy_loss(..., denom=micro_batch_denominators(...)[micro]).backward()
                clip, step

With token-mean (and the seq-mean modes) every micro-batch uses the denominator of its whole
minibatch, so the accumulated gradient is the minibatch gradient; with micro-token-mean each
micro-batch is its own token-mean ÷ the accumulation steps (the paper authors' code). Either
way Lopti's two passes (advantages and KL zeroed on the other group, same π_old, same
denominators) add up to the single-pass objective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import Tensor

from pmalopti.grpo.config import AlgoConfig
from pmalopti.grpo.rollout import response_logprobs
from pmalopti.rl import (
    exact_bucket_grad_norms,
    lopti_passes,
    lopti_split,
    loss_denominator,
    low_token_fraction,
    micro_batch_denominators,
    policy_loss,
    token_prob_diagnostics,
)


@dataclasses.dataclass
class UpdateBatch:
    """One rollout batch, ready for the update (B sequences, R response columns)."""

    prompt_ids: Tensor  # (B, L)
    prompt_mask: Tensor  # (B, L)
    response_ids: Tensor  # (B, R)
    response_mask: Tensor  # (B, R) bool
    old_logprobs: Tensor  # (B, R) log π_old at temperature T
    advantages: Tensor  # (B, R) per token, after AR
    ref_logprobs: Tensor | None = None  # (B, R), only with a KL term

    def __len__(self) -> int:
        return self.response_ids.shape[0]


def _logprobs(model, batch: UpdateBatch, idx: Tensor, temperature: float, with_entropy: bool):
    return response_logprobs(
        model,
        batch.prompt_ids[idx],
        batch.prompt_mask[idx],
        batch.response_ids[idx],
        batch.response_mask[idx],
        temperature=temperature,
        with_entropy=with_entropy,
    )


def update_policy(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch,
    algo: AlgoConfig,
    *,
    temperature: float,
    max_grad_norm: float | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generator: torch.Generator | None = None,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    with_entropy: bool = False,
    loss_scale_factor: float | None = None,
) -> dict[str, float]:
    """Run every optimizer step of one rollout batch; returns averaged metrics.

    `generator` shuffles minibatches when `algo.shuffle`. `loss_scale_factor` is the constant
    of "seq-mean-token-sum-norm" (verl: the max response length).
    """
    b = len(batch)
    if b % algo.minibatch_size:
        raise ValueError(
            f"algo.minibatch_size {algo.minibatch_size} does not divide the rollout batch {b}"
        )
    device = batch.response_ids.device
    mask = batch.response_mask
    passes = lopti_passes(batch.advantages, batch.old_logprobs, mask, algo.eta)
    params = [p for p in model.parameters() if p.requires_grad]
    tok_sums: dict[str, float] = defaultdict(float)  # token-weighted means over all micro-batches
    tok_n: dict[str, float] = defaultdict(float)
    pass_sums: dict[str, float] = defaultdict(float)  # summed per minibatch, averaged per pass
    step_sums: dict[str, float] = defaultdict(float)  # averaged over optimizer steps
    steps = 0
    model.train()
    for p in passes:
        suffix = "" if p.name == "all" else f"_{p.name}"
        for _ in range(algo.ppo_epochs):
            order = (
                torch.randperm(b, generator=generator).to(device)
                if algo.shuffle
                else torch.arange(b, device=device)
            )
            for mb in order.split(algo.minibatch_size):
                micros = mb.split(algo.micro_batch_size)
                denoms = micro_batch_denominators([mask[mc] for mc in micros], algo.agg)
                optimizer.zero_grad(set_to_none=True)
                for mc, denom in zip(micros, denoms, strict=True):
                    with amp():
                        logp, ent = _logprobs(model, batch, mc, temperature, with_entropy)
                    loss, m = policy_loss(
                        logp,
                        batch.old_logprobs[mc],
                        p.advantages[mc],
                        mask[mc],
                        clip_low=algo.clip_low,
                        clip_high=algo.clip_high,
                        clip_c=algo.clip_c,
                        ref_logprobs=None if batch.ref_logprobs is None else batch.ref_logprobs[mc],
                        kl_coef=algo.kl_coef,
                        kl_mask=p.kl_mask[mc],
                        kl_log_ratio_clamp=algo.kl_log_ratio_clamp,
                        agg=algo.agg,
                        denom=denom,
                        entropy=ent,
                        loss_scale_factor=loss_scale_factor,
                    )
                    loss.backward()
                    step_sums["actor/loss"] += loss.item()
                    n_tok = float(mask[mc].sum())
                    for k, v in m.items():
                        if k in ("actor/pg_loss", "actor/kl_loss"):
                            # Micro-batch losses share the minibatch denominator: they add up.
                            pass_sums[k + suffix] += v
                        else:
                            tok_sums[k] += v * n_tok
                            tok_n[k] += n_tok
                gn = torch.nn.utils.clip_grad_norm_(
                    params, max_grad_norm if max_grad_norm else math.inf
                )
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                steps += 1
                step_sums["actor/grad_norm"] += float(gn)
    out = {k: v / tok_n[k] for k, v in tok_sums.items() if tok_n[k]}
    out |= {k: v / (steps / len(passes)) for k, v in pass_sums.items()}
    out |= {k: v / steps for k, v in step_sums.items()}
    out["actor/optimizer_steps"] = float(steps)
    if algo.lopti:
        low, _ = lopti_split(batch.old_logprobs, mask, algo.eta)
        out["lopti/low_token_share"] = low_token_fraction(low, mask)
    return out


def bucket_diagnostics(
    model: torch.nn.Module,
    batch: UpdateBatch,
    algo: AlgoConfig,
    *,
    temperature: float,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    max_sequences: int | None = None,
) -> dict[str, float]:
    """Token share and exact gradient-norm share per π_old bucket (paper Fig. 1).

    One forward and one backward per non-empty bucket on the first `max_sequences` sequences
    (default: one micro-batch), at the current parameters (ratio = 1, the on-policy gradient).
    """
    n = min(len(batch), max_sequences or algo.micro_batch_size)
    idx = torch.arange(n, device=batch.response_ids.device)
    mask = batch.response_mask[idx]
    old = batch.old_logprobs[idx]
    adv = batch.advantages[idx]
    denom = loss_denominator(mask, algo.agg)
    model.train()
    with amp():
        logp, _ = _logprobs(model, batch, idx, temperature, False)

    def loss_fn(bucket_mask: Tensor) -> Tensor:
        loss, _ = policy_loss(
            logp,
            old,
            adv * bucket_mask.to(adv.dtype),
            mask,
            clip_low=algo.clip_low,
            clip_high=algo.clip_high,
            clip_c=algo.clip_c,
            agg=algo.agg,
            denom=denom,
        )
        return loss

    norms = exact_bucket_grad_norms(loss_fn, model.parameters(), old, mask)
    return token_prob_diagnostics(old, mask, adv, bucket_grad_norms=norms)
