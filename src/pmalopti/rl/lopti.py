"""Lopti: low-probability token isolation (arXiv 2505.12929 §4.2).

The response tokens of a rollout batch are split once by π_old into low (π_old < η) and high.
Pass 1 updates on the low tokens (advantages and KL zeroed on high ones), pass 2 on the high
tokens; both keep the same π_old and the same loss denominator, so their objectives add up to
the single-pass objective.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from pmalopti.rl._checks import as_bool_mask, check_2d, check_same_shape, per_token


def lopti_split(old_logprobs: Tensor, mask: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(low_mask, high_mask), both (B, T) bool: low = mask & (π_old < η), high = mask & ~low.

    old_logprobs: (B, T); mask: (B, T) response mask (bool or 0/1).
    """
    check_2d("old_logprobs", old_logprobs)
    check_same_shape("old_logprobs", old_logprobs, mask=mask)
    if not 0.0 <= float(eta) < 1.0:
        raise ValueError(f"eta must be in [0, 1); got {eta}")
    m = as_bool_mask("mask", mask)  # (B, T)
    low = m & (old_logprobs.detach().exp() < eta)  # (B, T)
    high = m & ~low  # (B, T)
    return low, high


class LoptiPass(NamedTuple):
    """Inputs of one update pass: per-token advantages and the mask the KL term is restricted to."""

    name: str  # "low", "high", or "all" for the plain single pass
    advantages: Tensor  # (B, T)
    kl_mask: Tensor  # (B, T) bool


def lopti_passes(
    advantages: Tensor, old_logprobs: Tensor, mask: Tensor, eta: float | None
) -> list[LoptiPass]:
    """The update passes of one rollout batch, in order.

    η None or 0 gives one pass over all tokens (plain GRPO); otherwise pass "low" then "high".
    The loss mask (and so the aggregation denominator) stays `mask` in every pass.
    advantages: (B,) or (B, T), already reweighted by AR if used (AR first, then the split).
    """
    check_2d("old_logprobs", old_logprobs)
    check_same_shape("old_logprobs", old_logprobs, mask=mask)
    adv = per_token("advantages", advantages, old_logprobs, "old_logprobs")  # (B, T)
    m = as_bool_mask("mask", mask)  # (B, T)
    if eta is None or eta == 0:
        return [LoptiPass("all", adv, m)]
    low, high = lopti_split(old_logprobs, m, eta)
    return [
        LoptiPass("low", adv * low.to(adv.dtype), low),
        LoptiPass("high", adv * high.to(adv.dtype), high),
    ]


def low_token_fraction(low_mask: Tensor, mask: Tensor) -> float:
    """Share of response tokens that Lopti puts in the low group (a logged diagnostic)."""
    n = int(as_bool_mask("mask", mask).sum())
    return float(low_mask.sum()) / n if n else 0.0
