"""Merge weights for PMA (arXiv 2505.12082, Sec. 3): pure functions, oldest checkpoint first.

M_avg = sum_i w_i M_i over checkpoints M_1 (oldest) ... M_N (newest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Method = Literal["sma", "ema", "wma"]
METHODS: tuple[Method, ...] = ("sma", "ema", "wma")


def merge_weights(method: Method, n: int, alpha: float | None = None) -> list[float]:
    """Weights w_1..w_N (oldest first) for `n` checkpoints; they sum to 1.

    - sma: w_i = 1/N.
    - wma: w_i = i / (N(N+1)/2), the newest weighs most.
    - ema: the recursion M_avg(1) = M_1, M_avg(i) = a*M_i + (1-a)*M_avg(i-1), so
      w_1 = (1-a)^(N-1) and w_i = a(1-a)^(N-i) for i >= 2. The paper's closed form a(1-a)^(N-i)
      for every i sums to less than 1, so we use the recursion. a = 1 gives the newest checkpoint.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"need at least one checkpoint to merge, got n={n!r}")
    if method == "sma":
        return [1.0 / n] * n
    if method == "wma":
        total = n * (n + 1) / 2
        return [i / total for i in range(1, n + 1)]
    if method == "ema":
        if alpha is None:
            raise ValueError("ema needs --alpha (the paper uses 0.1 or 0.2; 0.2 was better)")
        if not (0.0 < alpha <= 1.0) or math.isnan(alpha):
            raise ValueError(f"ema alpha must be in (0, 1], got {alpha}")
        w = [alpha * (1.0 - alpha) ** (n - i) for i in range(1, n + 1)]
        w[0] = (1.0 - alpha) ** (n - 1)
        return w
    raise ValueError(f"unknown merge method {method!r}; choose one of {list(METHODS)}")


def normalize_weights(weights: Sequence[float]) -> list[float]:
    """Explicit user weights, scaled to sum to 1 (negative weights are allowed, zero sum is not)."""
    if len(weights) == 0:
        raise ValueError("need at least one weight")
    ws = [float(w) for w in weights]
    if any(not math.isfinite(w) for w in ws):
        raise ValueError(f"weights must be finite numbers, got {list(weights)}")
    total = math.fsum(ws)
    if abs(total) < 1e-12:
        raise ValueError(f"weights {list(weights)} sum to zero; cannot normalise")
    return [w / total for w in ws]
