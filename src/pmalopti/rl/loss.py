"""The GRPO policy loss as verl's "vanilla" PPO loss: clipped ratio, dual clip, k3 KL, aggregation.

docs/design.md "GRPO with AR and Lopti" states the formulas; this module is their one home. Every
function is pure: tensors in, tensors (and python-float metrics) out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from pmalopti.rl._checks import as_bool_mask, check_2d, check_same_shape, per_token

Agg = Literal["token-mean", "micro-token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = get_args(Agg)

# verl clamps the log-ratio before exp for stability; a ratio of e^20 is never reached in practice.
_LOG_RATIO_CLAMP = 20.0
# verl clamps the k3 estimate to [-10, 10] (`kl_penalty_forward`); we match it so that both
# engines give the same loss. The clamp is only active when |logπ_ref − logπ| > ~11.
_KL_CLAMP = 10.0
# Bound of the clamp on d = logπ_ref − logπ inside k3: verl 0.9.1 uses ±20, the paper authors'
# verl fork (arXiv 2505.12929's code) ±5. With |d| > 5 the two estimates differ.
KL_LOG_RATIO_CLAMP_VERL = 20.0
KL_LOG_RATIO_CLAMP_AUTHORS = 5.0


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ values over mask; NaN/inf outside the mask (padding) cannot leak into the sum."""
    v = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return v.sum() if dim is None else v.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return masked_sum(values, mask) / (mask.sum() + 1e-8)


def kl_k3(
    logprobs: Tensor, ref_logprobs: Tensor, *, log_ratio_clamp: float = KL_LOG_RATIO_CLAMP_VERL
) -> Tensor:
    """k3 ("low_var_kl") estimate of KL(π‖π_ref) per token: exp(d) − d − 1, d = logπ_ref − logπ.

    (B, T) → (B, T). d is clamped to ±`log_ratio_clamp` (20: verl 0.9.1's `kl_penalty(...,
    "low_var_kl")`; 5: the paper authors' code), the estimate to [−10, 10] as both do.
    """
    if not log_ratio_clamp > 0:
        raise ValueError(f"log_ratio_clamp must be > 0; got {log_ratio_clamp}")
    d = (ref_logprobs - logprobs).clamp(-log_ratio_clamp, log_ratio_clamp)  # (B, T)
    return (d.exp() - d - 1).clamp(-_KL_CLAMP, _KL_CLAMP)


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    agg: Agg = "token-mean",
    *,
    denom: float | Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar as verl's `agg_loss` does.

    - "token-mean": Σ_tokens l / denom, denom = number of response tokens.
    - "micro-token-mean": the same sum, with `denom` = this micro-batch's response tokens × the
      number of micro-batches of its minibatch (`micro_batch_denominators`): the token-mean per
      micro-batch divided by the gradient-accumulation steps, as the paper authors' verl fork
      (`dp_actor.py`). Without `denom` the tensor is one micro-batch of one step: token-mean.
    - "seq-mean-token-mean": Σ_seq (mean of l over the sequence's tokens) / denom,
      denom = number of sequences with at least one response token (TRL "grpo").
    - "seq-mean-token-sum-norm": Σ_seq (Σ_t l) / denom / loss_scale_factor (Dr. GRPO),
      loss_scale_factor defaulting to T = mask.shape[-1] as verl does.
    Passing the whole minibatch's `denom` to every micro-batch makes the micro-batch losses sum
    to the minibatch loss (and Lopti's two passes sum to the single pass).
    """
    if agg not in AGG_MODES:
        raise ValueError(f"agg: {agg!r} is not an aggregation; choose one of {list(AGG_MODES)}")
    m = as_bool_mask("mask", mask)  # (B, T)
    if agg in ("token-mean", "micro-token-mean"):
        d = m.sum().clamp_min(1) if denom is None else denom
        return masked_sum(loss_mat, m) / d
    counts = m.sum(dim=-1)  # (B,)
    seq_sum = masked_sum(loss_mat, m, dim=-1)  # (B,)
    has_tokens = counts > 0  # (B,)
    d = has_tokens.sum().clamp_min(1) if denom is None else denom
    if agg == "seq-mean-token-mean":
        seq_loss = seq_sum / (counts + 1e-8)  # (B,)
        return masked_sum(seq_loss, has_tokens) / d
    scale = loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor
    return masked_sum(seq_sum, has_tokens) / d / scale


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_mask: Tensor | None = None,
    kl_log_ratio_clamp: float = KL_LOG_RATIO_CLAMP_VERL,
    agg: Agg = "token-mean",
    denom: float | Tensor | None = None,
    entropy: Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """verl's "vanilla" clipped policy loss plus β·k3-KL, aggregated; returns (loss, metrics).

    logprobs: (B, T) log π_θ (with grad); old_logprobs: (B, T) log π_old; advantages: (B, T)
    (or (B,), broadcast); mask: (B, T) response mask. Per token, with r = exp(clamp(logπ −
    logπ_old, ±20)): l = max(−Â·r, −Â·clip(r, 1−ε_low, 1+ε_high)), and for Â < 0 also
    l = min(l, −Â·c) (dual clip). The KL term is β·agg(k3 · kl_mask) over the same `mask` and
    `denom`: tokens outside kl_mask (Lopti's other group) contribute zero but still count in the
    denominator, so Lopti's pass losses add up to the single-pass loss. KL is skipped when
    ref_logprobs is None or kl_coef == 0; `kl_log_ratio_clamp` bounds k3's log-ratio (`kl_k3`).
    `entropy` (B, T) only feeds the metric.

    metrics: "actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl",
    and "actor/kl", "actor/kl_loss" with a reference, "actor/entropy" with `entropy`.
    """
    check_2d("logprobs", logprobs)
    check_same_shape(
        "logprobs",
        logprobs,
        old_logprobs=old_logprobs,
        mask=mask,
        ref_logprobs=ref_logprobs,
        kl_mask=kl_mask,
        entropy=entropy,
    )
    adv = per_token("advantages", advantages, logprobs, "logprobs").to(logprobs.dtype)  # (B, T)
    if agg not in AGG_MODES:
        raise ValueError(f"agg: {agg!r} is not an aggregation; choose one of {list(AGG_MODES)}")
    if clip_c <= 1.0:
        raise ValueError(f"clip_c must be > 1 (dual-clip lower bound); got {clip_c}")
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low/clip_high must be >= 0; got {clip_low}/{clip_high}")
    m = as_bool_mask("mask", mask)  # (B, T)
    old = old_logprobs.detach()

    log_ratio = (logprobs - old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    loss1 = -adv * ratio  # (B, T)
    loss2 = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)  # (B, T)
    clipped = torch.maximum(loss1, loss2)  # (B, T)
    loss3 = -adv * clip_c  # (B, T) dual clip caps the loss of Â < 0 tokens with huge ratios
    pg_mat = torch.where(adv < 0, torch.minimum(clipped, loss3), clipped)  # (B, T)
    pg_loss = aggregate(pg_mat, m, agg, denom=denom, loss_scale_factor=loss_scale_factor)

    # metric tensors are gathered and moved to the host once: one device sync per call
    stats: dict[str, Tensor] = {
        "actor/pg_loss": pg_loss.detach(),
        "actor/pg_clipfrac": masked_mean((loss2 > loss1).to(logprobs.dtype), m),
        "actor/pg_clipfrac_lower": masked_mean(
            ((clipped > loss3) & (adv < 0)).to(logprobs.dtype), m
        ),
        "actor/ppo_kl": masked_mean(-log_ratio.detach(), m),
    }
    loss = pg_loss
    if ref_logprobs is not None and kl_coef != 0:
        km = m if kl_mask is None else m & as_bool_mask("kl_mask", kl_mask)  # (B, T)
        kl = kl_k3(logprobs, ref_logprobs.detach(), log_ratio_clamp=kl_log_ratio_clamp)  # (B, T)
        kl_mat = torch.where(km, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
        kl_loss = aggregate(kl_mat, m, agg, denom=denom, loss_scale_factor=loss_scale_factor)
        loss = pg_loss + kl_coef * kl_loss
        stats["actor/kl"] = masked_mean(kl.detach(), km)
        stats["actor/kl_loss"] = kl_loss.detach()
    if entropy is not None:
        stats["actor/entropy"] = masked_mean(entropy.detach(), m)
    values = torch.stack([v.detach().to(torch.float64) for v in stats.values()]).tolist()
    metrics = dict(zip(stats, values, strict=True))
    return loss, metrics


def response_token_count(mask: Tensor) -> int:
    """The token-mean denominator of a minibatch: its number of response tokens."""
    return int(as_bool_mask("mask", mask).sum())


def sequence_count(mask: Tensor) -> int:
    """The seq-mean denominator of a minibatch: its sequences with at least one response token."""
    return int((as_bool_mask("mask", mask).sum(dim=-1) > 0).sum())


def loss_denominator(mask: Tensor, agg: Agg) -> int:
    """`denom` for `policy_loss` over a whole minibatch with aggregation `agg`.

    For "micro-token-mean" the minibatch is taken as one micro-batch (one accumulation step).
    """
    if agg not in AGG_MODES:
        raise ValueError(f"agg: {agg!r} is not an aggregation; choose one of {list(AGG_MODES)}")
    if agg in ("token-mean", "micro-token-mean"):
        return response_token_count(mask)
    return sequence_count(mask)


def micro_batch_denominators(micro_masks: Sequence[Tensor], agg: Agg) -> list[int]:
    """`denom` of each micro-batch of one minibatch (one optimizer step), given their masks.

    "micro-token-mean": micro-batch i gets max(1, tokens_i) × n_micro, so its loss is its own
    token-mean divided by the accumulation steps (the authors' `loss / gradient_accumulation`).
    Every other mode: the whole minibatch's denominator, so the micro-batch losses add up to the
    minibatch loss. The masks may have different widths (each micro-batch padded on its own).
    """
    if agg not in AGG_MODES:
        raise ValueError(f"agg: {agg!r} is not an aggregation; choose one of {list(AGG_MODES)}")
    if not micro_masks:
        raise ValueError("micro_masks: a minibatch needs at least one micro-batch")
    n = len(micro_masks)
    if agg == "micro-token-mean":
        return [max(1, response_token_count(m)) * n for m in micro_masks]
    count = response_token_count if agg == "token-mean" else sequence_count
    total = sum(count(m) for m in micro_masks)
    return [total] * n
