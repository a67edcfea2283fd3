"""Shape and range validation shared by the `pmalopti.rl` functions (errors name the tensors)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_2d(name: str, t: Tensor) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be (B, T); got shape {tuple(t.shape)}")


def check_same_shape(ref_name: str, ref: Tensor, **others: Tensor | None) -> None:
    """Every tensor in `others` must have `ref`'s shape; the message names both."""
    for name, t in others.items():
        if t is not None and t.shape != ref.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
                "they must match"
            )


def as_bool_mask(name: str, mask: Tensor) -> Tensor:
    """Accept bool masks and 0/1 float/int masks (verl's response_mask is float or int)."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.dtype in (
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
    ):
        return mask != 0
    raise ValueError(f"{name} must be a bool or 0/1 tensor; got dtype {mask.dtype}")


def per_token(name: str, adv: Tensor, like: Tensor, like_name: str) -> Tensor:
    """Broadcast per-sequence advantages (B,) to per-token (B, T); pass (B, T) through."""
    if adv.dim() == 1:
        if adv.shape[0] != like.shape[0]:
            raise ValueError(
                f"{name} has shape {tuple(adv.shape)} but {like_name} has shape "
                f"{tuple(like.shape)}; a (B,) {name} needs B == {like.shape[0]}"
            )
        return adv.unsqueeze(-1).expand_as(like)
    check_same_shape(like_name, like, **{name: adv})
    return adv
