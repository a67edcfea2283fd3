"""Where and how a trainer computes: device and autocast precision (threads: `runtime.threads`).

Imports torch only when called, so configs can use the vocabulary cheaply. One vocabulary for
every trainer: `device` is `auto|cpu|cuda` (auto = CUDA when available) and
`precision` is `auto|float32|bfloat16` (auto = bfloat16 autocast on CUDA, float32 on CPU; the
weights themselves keep their dtype). `none` is accepted as an old spelling of `float32`.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16", "none"]
"""`none` is the old spelling of `float32` (configs written before the two trainers shared it)."""
PRECISION_ALIASES = {"none": "float32"}


def canonical_precision(value: str) -> str:
    """`value` with old spellings replaced (`none` -> `float32`)."""
    return PRECISION_ALIASES.get(value, value)


def resolve_device(name: str, field: str = "device") -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a GPU is an error naming `field`."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field}: cuda was requested but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for `bfloat16` (any device) and for `auto` on CUDA; a no-op otherwise."""
    import torch

    precision = canonical_precision(precision)
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clock(device: torch.device) -> float:
    """A timestamp taken after the device's queued work (CUDA runs asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
