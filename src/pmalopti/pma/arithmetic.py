"""The merge arithmetic, defined once: widen to float32, fold in the weighted inputs, round back.

Every merge path computes M_avg = sum_i w_i M_i (docs/design.md "Merging") as

    acc = fl(w_1 * x_1),  then  acc = fl(acc + fl(w_i * x_i))  for i = 2 .. N

in IEEE float32, where x_i is input i widened exactly to float32 (bf16 and fp16 widen exactly)
and w_i is the weight rounded to float32. The product is rounded before the add: there is no
fused multiply-add, which numpy lacks and which torch's `acc.add_(x, alpha=w)` uses in its
vectorised loop only. The sum is then rounded once to the output dtype, to nearest even.
So the torch-free streaming merge (numpy: `widen`, `fold_np`, `narrow`) and the torch paths
(in-memory, online averager, DCP: `fold`, then `.to(dtype)`) give the same bits
(tests/pma/test_arithmetic.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# numpy views of the raw bytes of the floating dtypes we average (bf16: its bit pattern).
_VIEW = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
# The smallest float32 magnitude that rounds to infinity in each output dtype: a merged value is
# finite in the output iff |acc| is below it (NaN compares false). bf16: 0x7F7F8000 rounds up
# to 0x7F80 (inf); fp16: 65520 rounds to inf, 65519.99 to 65504.
OVERFLOW = {
    "BF16": float(np.array(0x7F7F8000, np.uint32).view(np.float32)),
    "F16": 65520.0,
    "F32": float("inf"),
    "F64": float("inf"),
}


_SIXTEEN = np.uint32(16)


def widen(raw: np.ndarray, code: str, scratch: np.ndarray) -> np.ndarray:
    """The float32 values of `raw` (uint8 bytes of dtype `code`), exactly; (k,) float32.

    Uses the front of the uint32 `scratch` (at least k elements) unless `raw` is float32
    already, in which case it is viewed, not copied.
    """
    x = raw.view(_VIEW[code])  # (k,)
    if code == "F32":
        return x
    out = scratch[: x.size]
    if code == "BF16":
        # bf16 is the top half of a float32: shift its 16 bits into place (exact); a plain
        # widening copy, then an in-place shift, is faster than one casting shift
        np.copyto(out, x)
        np.left_shift(out, _SIXTEEN, out=out)
    else:
        np.copyto(out.view(np.float32), x, casting="unsafe")  # fp16 exact; f64 rounds to nearest
    return out.view(np.float32)


def fold_np(
    acc: np.ndarray, x: np.ndarray, w: np.float32, *, first: bool, scratch: np.ndarray
) -> None:
    """acc = fl(w * x) when `first`, else acc = fl(acc + fl(w * x)); all (k,) float32.

    `scratch` (float32, >= k) holds the product; it may be `x` itself.
    """
    if first:
        np.multiply(x, w, out=acc)
        return
    y = scratch[: x.size]
    np.multiply(x, w, out=y)
    np.add(acc, y, out=acc)


def narrow(
    acc: np.ndarray, code: str, out: np.ndarray, scratch: np.ndarray, *, finite: bool = False
) -> None:
    """Round the float32 `acc` (k,) to dtype `code` into the uint8 bytes `out`, as torch's
    `.to(dtype)` does: round to nearest even; a NaN stays a NaN (quiet, sign kept).

    `scratch` is a uint32 array of at least k elements; `finite`: the caller knows `acc` holds
    no NaN (skips looking for one).
    """
    o = out.view(_VIEW[code])  # (k,)
    if code != "BF16":
        np.copyto(o, acc, casting="unsafe")
        return
    u = acc.view(np.uint32)
    t = scratch[: acc.size]
    # round to nearest even on the bit pattern: add 0x7FFF plus the lowest kept bit, drop 16 bits
    np.right_shift(u, 16, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(t, 0x7FFF, out=t)
    np.add(t, u, out=t)
    np.right_shift(t, 16, out=t)
    np.copyto(o, t, casting="unsafe")
    if finite:
        return
    nan = acc != acc
    if nan.any():
        # rounding would carry a NaN's payload into the exponent (inf): keep it a quiet NaN
        o[nan] = (u[nan] >> 16).astype(np.uint16) | 0x0040


def count_overflow(acc: np.ndarray, code: str) -> int:
    """How many values of `acc` are NaN or infinite once rounded to dtype `code`."""
    limit = OVERFLOW[code]
    hi, lo = acc.max(initial=-np.inf), acc.min(initial=np.inf)
    if hi < limit and lo > -limit:  # NaN compares false: max/min propagate it
        return 0
    return int(np.count_nonzero(~(np.abs(acc) < limit)))


def fold(acc: Any, x: Any, w: float, *, first: bool, scratch: bool = False) -> None:
    """The same step on torch float32 tensors: acc = fl(w * x), or acc += fl(w * x).

    Never `acc.add_(x, alpha=w)`: its vectorised loop fuses the multiply into the add. With
    `scratch`, `x` is the caller's own buffer and holds the product afterwards.
    """
    import torch

    if first:
        torch.mul(x, w, out=acc)
    else:
        acc.add_(x.mul_(w) if scratch else x * w)
