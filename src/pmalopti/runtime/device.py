"""Where and how a trainer computes: device, autocast precision and CPU threads.

One vocabulary for every trainer: `device` is `auto|cpu|cuda` (auto = CUDA when available) and
`precision` is `auto|float32|bfloat16` (auto = bfloat16 autocast on CUDA, float32 on CPU; the
weights themselves keep their dtype). `none` is accepted as an old spelling of `float32`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Literal

import torch

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16", "none"]
"""`none` is the old spelling of `float32` (configs written before the two trainers shared it)."""
PRECISION_ALIASES = {"none": "float32"}
MAX_THREADS = 1024
THREADS_ENV = "PMALOPTI_THREADS"


def canonical_precision(value: str) -> str:
    """`value` with old spellings replaced (`none` -> `float32`)."""
    return PRECISION_ALIASES.get(value, value)


def resolve_device(name: str, field: str = "device") -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a GPU is an error naming `field`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field}: cuda was requested but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for `bfloat16` (any device) and for `auto` on CUDA; a no-op otherwise."""
    precision = canonical_precision(precision)
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clock(device: torch.device) -> float:
    """A timestamp taken after the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset set)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_threads() -> int:
    """Torch threads when the config says 0: `$PMALOPTI_THREADS` if set, else `$OMP_NUM_THREADS`
    if set, else one fewer than the usable cores (at least 1).

    OpenMP threads wait for each other at every parallel region: when another busy process takes
    one of our cores, a thread per core stalls the whole step (measured in
    `benchmarks/threads_under_load.py`), while leaving one core free costs little.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(
                f"${THREADS_ENV}={env!r}: expected a whole number of threads"
            ) from None
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"${THREADS_ENV}={env!r}: must be between 1 and {MAX_THREADS}")
        return n
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()  # torch already follows the user's OpenMP setting
    return max(usable_cores() - 1, 1)


@contextlib.contextmanager
def torch_threads(requested: int = 0) -> Iterator[int]:
    """Run a block with `requested` torch threads (0: `auto_threads()`); restore them after."""
    if not 0 <= requested <= MAX_THREADS:
        raise ValueError(f"threads must be between 0 (auto) and {MAX_THREADS}, got {requested}")
    n = requested or auto_threads()
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)
