"""The merge arithmetic, defined once: widen to float32, fold in the weighted inputs, round back.

Every merge path computes M_avg = sum_i w_i M_i (docs/design.md "Merging") as

    acc = fl(w_1 * x_1),  then  acc = fl(acc + fl(w_i * x_i))  for i = 2 .. N

in IEEE float32, where x_i is input i widened exactly to float32 (bf16 and fp16 widen exactly)
and w_i is the weight rounded to float32. The product is rounded before the add: there is no
fused multiply-add, which numpy lacks and which torch's `acc.add_(x, alpha=w)` uses in its
vectorised loop only. The sum is then rounded once to the output dtype, to nearest even.
So the torch-free streaming merge (numpy: `weighted_sum`, `round_into`) and the torch paths
(in-memory, online averager, DCP: `fold`, then `.to(dtype)`) give the same bits
(tests/pma/test_arithmetic.py).

numpy works on a block of k elements in the *split* layout: the sums of the even elements
(0, 2, 4, ...) first, then those of the odd ones. A bf16 pair read as one uint32 then widens with
one shift (the even element) and one mask (the odd one), without a converting copy; the layout
is undone when the block is rounded into the output. Every element gets the same operations in
either layout, so the bits do not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
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
_16, _ONE, _HALF = np.uint32(16), np.uint32(1), np.uint32(0x7FFF)
_HIGH = np.uint32(0xFFFF0000)


def _widen_into(u: np.ndarray, raw: np.ndarray, code: str) -> None:
    """Input bytes `raw` (k elements of dtype `code`) as float32 bit patterns, split layout,
    into the uint32 `u` (k,)."""
    k = u.size
    even = (k + 1) // 2
    x = raw.view(_VIEW[code])  # (k,)
    if code != "BF16":
        f = u.view(np.float32)
        np.copyto(f[:even], x[0::2], casting="unsafe")  # fp16 exact; f64 to nearest
        np.copyto(f[even:], x[1::2], casting="unsafe")
        return
    pairs = k // 2
    v = raw[: 4 * pairs].view(np.uint32)  # (pairs,): element 2j low, 2j + 1 high
    np.left_shift(v, _16, out=u[:pairs])  # even elements: bf16 is a float32's top half
    np.bitwise_and(v, _HIGH, out=u[even:])  # odd elements: already in the top half
    if k % 2:
        np.left_shift(x[k - 1 :], _16, out=u[pairs:even], dtype=np.uint32)


def weighted_sum(
    acc: np.ndarray,
    inputs: Sequence[tuple[np.ndarray, str]],
    ws: Sequence[np.float32],
    scratch: np.ndarray,
) -> None:
    """acc = fl(w_1 x_1), then acc = fl(acc + fl(w_i x_i)), over `inputs` = (bytes, dtype
    code) of the same k elements; acc (k,) float32 ends in the split layout.

    `scratch`: a uint32 array of at least k elements. The products overwrite it, never the
    inputs (they may be read-only views of mapped files).
    """
    k = acc.size
    u = scratch[:k]
    f = u.view(np.float32)  # (k,) the widened input, then its product
    for i, ((raw, code), w) in enumerate(zip(inputs, ws, strict=True)):
        if code == "F32":  # no widening: multiply straight from the input, split by slicing
            even = (k + 1) // 2
            x = raw.view(np.float32)
            np.multiply(x[0::2], w, out=acc[:even] if i == 0 else f[:even])
            np.multiply(x[1::2], w, out=acc[even:] if i == 0 else f[even:])
        else:
            _widen_into(u, raw, code)
            np.multiply(f, w, out=acc if i == 0 else f)
        if i:
            np.add(acc, f, out=acc)


def round_into(
    acc: np.ndarray, code: str, out: np.ndarray, scratch: np.ndarray, *, finite: bool = False
) -> None:
    """Round the float32 sums `acc` (k,) in the split layout to dtype `code`, into the uint8
    bytes `out` in element order, as torch's `.to(dtype)` does: to nearest even; a NaN stays
    a NaN (quiet, sign kept).

    `scratch` is a uint32 array of at least k elements; `finite`: the caller knows `acc`
    holds no NaN (skips looking for one).
    """
    k = acc.size
    even, pairs = (k + 1) // 2, k // 2
    o = out[: k * np.dtype(_VIEW[code]).itemsize].view(_VIEW[code])  # (k,)
    if code != "BF16":
        np.copyto(o[0::2], acc[:even], casting="unsafe")
        np.copyto(o[1::2], acc[even:], casting="unsafe")
        return
    a = acc.view(np.uint32)
    t = scratch[:k]
    # round to nearest even on the bit pattern: add 0x7FFF plus the lowest kept bit, keep the
    # top 16 bits (low half of the pair for an even element, high half for an odd one)
    np.right_shift(a, _16, out=t)
    np.bitwise_and(t, _ONE, out=t)
    np.add(t, _HALF, out=t)
    np.add(t, a, out=t)
    np.right_shift(t[:even], _16, out=t[:even])
    np.bitwise_and(t[even:], _HIGH, out=t[even:])
    np.bitwise_or(t[:pairs], t[even:], out=out[: 4 * pairs].view(np.uint32))
    if k % 2:
        o[k - 1] = t[even - 1]
    if finite:
        return
    nan = np.isnan(acc)
    if nan.any():
        # rounding carries a NaN's payload into the exponent (inf): keep it a quiet NaN
        fix = (a >> _16).astype(np.uint16) | np.uint16(0x0040)  # (k,) split layout
        o[0::2] = np.where(nan[:even], fix[:even], o[0::2])
        o[1::2] = np.where(nan[even:], fix[even:], o[1::2])


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
