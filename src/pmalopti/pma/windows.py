"""Online PMA's schedule: the averager's config and the merge-window arithmetic (pure functions).

Merge points fall every `every` steps; the window ending at merge point p takes its snapshots at
p-(N-1)V, ..., p-V, p (arXiv 2505.12082, Sec. 3-4). Kept apart from the averager so that trainers'
callbacks and tests can import the arithmetic without the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pmalopti.pma.spec import MergeSpec
from pmalopti.pma.weights import METHODS, Method, merge_weights

Device = Literal["cpu", "same"]


@dataclass
class OnlineAverageConfig:
    """When and how the online averager merges (loadable from YAML, overridable with --set)."""

    method: Method = "sma"
    """Merge weights: 'sma' (equal), 'wma' (linear, newest weighs most) or 'ema' (needs alpha)."""
    n: int = 10
    """N, snapshots per merge (the paper's default is 10)."""
    interval: int = 10
    """V, optimizer steps between two snapshots of one merge."""
    every: int | None = None
    """M, optimizer steps between merge points (merges at M, 2M, ...); default N*V."""
    alpha: float | None = None
    """EMA coefficient in (0, 1], only for method 'ema' (the paper tests 0.1 and 0.2)."""
    start_step: int = 0
    """No snapshot is taken before this step; merges whose window would reach earlier are skipped."""
    device: Device = "cpu"
    """Where accumulators live: 'cpu' (saves accelerator memory) or 'same' (beside each tensor)."""

    def __post_init__(self) -> None:
        try:
            MergeSpec(self.method, self.alpha)  # the one validation of a merge method
        except ValueError as exc:
            raise ValueError(f"{'alpha' if self.method in METHODS else 'method'}: {exc}") from None
        for name in ("n", "interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if self.every is None:
            self.every = self.n * self.interval
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(
                f"every: must be an integer >= 1 (steps between merges), got {self.every!r}"
            )
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int):
            raise ValueError(f"start_step: must be an integer >= 0, got {self.start_step!r}")
        if self.start_step < 0:
            raise ValueError(f"start_step: must be >= 0, got {self.start_step}")
        if self.device not in ("cpu", "same"):
            raise ValueError(f"device: {self.device!r} is not allowed; choose 'cpu' or 'same'")

    @property
    def weights(self) -> list[float]:
        """w_1..w_N, oldest snapshot first."""
        return merge_weights(self.method, self.n, self.alpha)


# --- merge-window arithmetic (pure) ----------------------------------------------------------


def window_steps(merge_step: int, n: int, interval: int) -> list[int]:
    """Snapshot steps of the window ending at `merge_step`, oldest first."""
    return [merge_step - (n - 1 - i) * interval for i in range(n)]


def windows_at(step: int, cfg: OnlineAverageConfig) -> list[tuple[int, int]]:
    """(merge_step, i) for every scheduled window whose i-th snapshot (0 = oldest) is at `step`."""
    assert cfg.every is not None
    hits = []
    for later in range(cfg.n):  # snapshots of the window still to come after this one
        p = step + later * cfg.interval
        if p > 0 and p % cfg.every == 0 and p - (cfg.n - 1) * cfg.interval >= cfg.start_step:
            hits.append((p, cfg.n - 1 - later))
    return hits


def next_merge_step(after: int, cfg: OnlineAverageConfig) -> int:
    """The first scheduled merge point strictly after step `after`."""
    assert cfg.every is not None
    first = cfg.start_step + (cfg.n - 1) * cfg.interval  # earliest merge whose window fits
    p = max(after + 1, first, 1)
    return -(-p // cfg.every) * cfg.every
