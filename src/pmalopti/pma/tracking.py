"""The tensors online PMA averages: a module's parameters and persistent buffers, local shards.

FSDP2 / DTensor parameters are averaged shard by shard on each rank (`to_local()`); layouts that
hide a rank's slice outside the tensor (DeepSpeed ZeRO-3, FSDP1 flat parameters) are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

try:  # torch builds without distributed support have no DTensor; nothing is sharded there.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of a DTensor, or the tensor itself."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


def tracked_tensors(model_or_params: Any) -> list[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers of a module (tied weights once), or a name->tensor map."""
    if isinstance(model_or_params, nn.Module):
        # named_parameters drops tied duplicates (lm_head.weight is model.embed_tokens.weight);
        # non-persistent buffers (rotary inv_freq) are recomputed by the model, not merged.
        persistent = set(model_or_params.state_dict(keep_vars=True))
        items = list(model_or_params.named_parameters())
        items += [(n, b) for n, b in model_or_params.named_buffers() if n in persistent]
    elif isinstance(model_or_params, Mapping):
        items = list(model_or_params.items())
    elif isinstance(model_or_params, Iterable):
        items = list(model_or_params)
    else:
        raise TypeError(
            "model_or_params: expected an nn.Module, a mapping of name -> tensor or an iterable of "
            f"(name, tensor) pairs, got {type(model_or_params).__name__}"
        )
    if not items:
        raise ValueError("model_or_params: there are no tensors to average")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError("model_or_params: tensor names must be unique")
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"model_or_params: {name!r} is a {type(t).__name__}, not a tensor")
        # Both keep each rank's slice outside the tensor torch shows us: averaging that tensor
        # would average placeholders (ZeRO-3) or flattened, renamed groups (FSDP1).
        if hasattr(t, "ds_id"):
            raise ValueError(
                f"model_or_params: {name!r} is partitioned by DeepSpeed ZeRO-3, which the averager "
                "cannot read; use FSDP2 (fully_shard) or ZeRO stage 1/2"
            )
        if type(t).__name__ == "FlatParameter":
            raise ValueError(
                f"model_or_params: {name!r} is an FSDP1 flat parameter; use FSDP2 (fully_shard)"
            )
    return items
