"""How many CPU threads torch uses: from the cores this process may run on.

Imports torch only when a block sets the threads, so configs can declare the bound cheaply.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

THREADS_ENV = "PMALOPTI_THREADS"
MAX_THREADS = 4 * (os.cpu_count() or 1)
"""Upper bound of `train.threads` and `$PMALOPTI_THREADS` (more only oversubscribes the CPU)."""


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
        import torch

        return torch.get_num_threads()  # torch already follows the user's OpenMP setting
    return max(usable_cores() - 1, 1)


@contextlib.contextmanager
def torch_threads(requested: int = 0) -> Iterator[int]:
    """Run a block with `requested` torch threads (0: `auto_threads()`); restore them after."""
    if not 0 <= requested <= MAX_THREADS:
        raise ValueError(f"threads must be between 0 (auto) and {MAX_THREADS}, got {requested}")
    import torch

    n = requested or auto_threads()
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)
