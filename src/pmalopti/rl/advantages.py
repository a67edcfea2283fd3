"""Group-relative advantages (GRPO) and Advantage Reweighting (AR, arXiv 2505.12929 §4.1)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from pmalopti.rl._checks import check_2d, per_token

Scale = Literal["group", "none"]


def group_advantages(
    rewards: Tensor, group_size: int, *, scale: Scale = "group", eps: float = 1e-6
) -> Tensor:
    """Per-sequence GRPO advantages.

    rewards: (B,) with B = P·G, the G completions of each prompt consecutive.
    Returns (B,): (r − mean_group) / (std_group + eps) with the unbiased std (verl's `torch.std`),
    or r − mean_group when `scale="none"` (Dr. GRPO). As in verl's
    `compute_grpo_outcome_advantage`, a group of one completion uses mean 0 and std 1.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,); got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int; got {group_size!r}")
    if rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"group_size {group_size} does not divide the number of rewards {rewards.shape[0]}"
        )
    if scale not in ("group", "none"):
        raise ValueError(f"scale: {scale!r} is not allowed; choose 'group' or 'none'")
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r = rewards.detach().to(dtype).view(-1, group_size)  # (P, G)
    if group_size == 1:
        mean = torch.zeros_like(r)  # (P, 1)
        std = torch.ones_like(r)
    else:
        mean = r.mean(dim=1, keepdim=True)  # (P, 1)
        std = r.std(dim=1, keepdim=True)  # (P, 1), unbiased
    adv = r - mean if scale == "none" else (r - mean) / (std + eps)  # (P, G)
    return adv.reshape(-1)


def reweight_advantages(advantages: Tensor, old_logprobs: Tensor, alpha: float) -> Tensor:
    """Advantage Reweighting: Â_{i,t} = (α·π_old(o_{i,t}) + 1 − α) · Â_{i,t}.

    advantages: (B,) or (B, T); old_logprobs: (B, T), log π_old at the sampling temperature.
    Returns (B, T). Low-probability tokens get gradients of norm ∝ (1 − π) (the paper's §3);
    the weight shrinks their advantage relative to high-probability ones. α = 0 is plain GRPO.
    """
    check_2d("old_logprobs", old_logprobs)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    adv = per_token("advantages", advantages, old_logprobs, "old_logprobs")  # (B, T)
    if alpha == 0:
        return adv.clone()
    weight = alpha * old_logprobs.detach().exp() + (1.0 - alpha)  # (B, T)
    return weight.to(adv.dtype) * adv
