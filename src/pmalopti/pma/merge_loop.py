"""The streaming merge's loop, without torch: pieces of each tensor, read, summed, written in order.

Every tensor is cut into pieces whose N input byte ranges and output bytes together fill at most
`chunk_bytes`.
Worker threads each take a piece, map it from the N input files (read-only, no copy; a `.bin`
input is read into the worker's buffer instead) and sum it in float32 with numpy
(`pma.arithmetic`), `BLOCK` elements at a time so that the running sums and the products stay
in the CPU caches while all N inputs are folded in; the calling thread appends finished pieces,
in order, to the output shard. Mapping, numpy loops and file writes release the GIL, so reading,
summing and writing overlap on as many cores as there are workers. Memory is one piece of
`chunk_bytes` mapped (or read) and a few output pieces per worker, whatever N and the model
size: a piece is unmapped as soon as it is summed.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pmalopti.pma.arithmetic import count_overflow, round_into, weighted_sum
from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.safetensors_format import DType, TensorSpec
from pmalopti.pma.writer import ShardedWriter

BLOCK = 1 << 18
"""elements summed at a time: the float32 sums and products (1 MiB each) stay in the caches
while all N inputs are folded in, and numpy's per-call cost is spread over many elements"""
_ALIGN = 8  # each input's bytes start 8-byte aligned in the read buffer (views as float64 work)


def _pieces(numel: int, per_piece: int) -> list[tuple[int, int]]:
    """(start, count) element ranges covering a flattened tensor; one empty piece if numel = 0.

    Pieces longer than a block are whole blocks, so every block but a tensor's last is full."""
    if per_piece > BLOCK:
        per_piece -= per_piece % BLOCK
    return [(s, min(per_piece, numel - s)) for s in range(0, numel, per_piece)] or [(0, 0)]


class _Scratch(threading.local):
    """One worker thread's buffers, reused for every piece (untouched pages cost no memory)."""

    def __init__(self, read_bytes: int):
        self.read = np.empty(read_bytes, dtype=np.uint8)
        self.acc = np.empty(BLOCK, dtype=np.float32)  # (BLOCK,) running sum
        self.bits = np.empty(BLOCK, dtype=np.uint32)  # (BLOCK,) widened input / rounding


def stream(
    readers: Sequence[CheckpointReader],
    ws: Sequence[float],
    out_specs: Sequence[TensorSpec],
    writer: ShardedWriter,
    *,
    workers: int,
    chunk_bytes: int,
    progress: bool,
) -> dict[str, Any]:
    """Write sum_i ws[i] * readers[i] for every tensor of `out_specs` through `writer` (closed at
    the end); non-floating tensors are copied from the newest input and must agree."""
    t0 = time.perf_counter()
    n = len(readers)
    w32 = [np.float32(w) for w in ws]  # the weights as the float32 sum uses them
    in_dtypes: list[list[DType]] = [[r.specs[s.name].dtype for r in readers] for s in out_specs]
    pieces = []
    buf_bytes = chunk_bytes
    for k, spec in enumerate(out_specs):
        # a piece's bytes in all N inputs (each aligned) and its output fill `chunk_bytes`
        per_element = sum(d.itemsize for d in in_dtypes[k]) + spec.dtype.itemsize
        per_piece = max(1, (chunk_bytes - _ALIGN * n) // per_element)
        pieces += [(k, s, c) for s, c in _pieces(math.prod(spec.shape), per_piece)]
        buf_bytes = max(buf_bytes, _ALIGN * n + per_element)  # > chunk_bytes only if it is tiny
    # Buffers of fixed sizes, whatever N and the model size.
    local = _Scratch(buf_bytes)

    def merge_piece(k: int, start: int, count: int, obuf: np.ndarray) -> np.ndarray:
        spec, dtypes = out_specs[k], in_dtypes[k]
        raws, at = [], 0
        for r, d in zip(readers, dtypes, strict=True):
            size = count * d.itemsize
            raws.append(r.map_bytes(spec.name, start, count, local.read[at : at + size]))
            at += -(-size // _ALIGN) * _ALIGN
        osize = spec.dtype.itemsize
        out = obuf[: count * osize]  # (count * itemsize,) bytes
        if not spec.dtype.is_floating_point:
            for r, raw in zip(readers, raws, strict=True):
                if not np.array_equal(raw, raws[-1]):
                    raise ValueError(
                        f"tensor {spec.name!r} is not floating point ({spec.dtype}), so it is "
                        f"copied rather than averaged, but it differs between checkpoints "
                        f"{r.path} and {readers[-1].path}"
                    )
            out[:] = raws[-1]
            return out
        code = spec.dtype.code
        for b in range(0, count, BLOCK):
            e = min(count, b + BLOCK)
            acc = local.acc[: e - b]  # (e - b,) float32 sums, split layout (pma.arithmetic)
            blocks = [
                (raw[b * d.itemsize : e * d.itemsize], d.code)
                for raw, d in zip(raws, dtypes, strict=True)
            ]
            weighted_sum(acc, blocks, w32, local.bits)
            bad = count_overflow(acc, code)
            if bad:
                raise ValueError(
                    f"merged tensor {spec.name!r} has {bad} non-finite values (inf/nan): an "
                    "input holds them, or the result overflows the output dtype (try --dtype fp32)"
                )
            round_into(acc, code, out[b * osize : e * osize], local.bits, finite=True)
        return out

    total = sum(r.nbytes for r in readers)
    # One output buffer per piece in flight: the bound on memory, whatever N and the model.
    free = [np.empty(buf_bytes, dtype=np.uint8) for _ in range(2 * workers)]
    pending: deque[tuple[TensorSpec, int, np.ndarray, Future[np.ndarray]]] = deque()
    todo = iter(pieces)
    bar = _progress(total) if progress else None
    with ThreadPoolExecutor(workers, thread_name_prefix="pmalopti-merge") as pool:
        try:
            while True:
                while free:
                    piece = next(todo, None)
                    if piece is None:
                        break
                    obuf = free.pop()
                    spec = out_specs[piece[0]]
                    fut = pool.submit(merge_piece, *piece, obuf)
                    pending.append((spec, piece[0], obuf, fut))
                if not pending:
                    break
                spec, k, obuf, fut = pending.popleft()
                out = fut.result()
                writer.write_bytes(spec.name, spec.dtype, out)
                free.append(obuf)
                if bar is not None:
                    count = len(out) // max(1, spec.dtype.itemsize)
                    bar.update(count * sum(d.itemsize for d in in_dtypes[k]))
            writer.close()
        except BaseException:
            for *_, fut in pending:
                fut.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    return {
        "tensors": len(out_specs),
        "bytes_read": total,
        "bytes_written": sum(s.nbytes for s in out_specs),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="merge", file=sys.stderr)
