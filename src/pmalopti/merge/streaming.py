"""The streaming PMA merge: M_avg = sum_i w_i M_i, one tensor piece at a time.

Memory is flat in N and in model size: every tensor is processed in pieces of at most
`chunk_bytes`, read into a fixed pool of reused buffers by reader threads while the main thread
accumulates the weighted sum in float32 (DESIGN.md "Merging") and a writer thread appends the
cast result to the output shard. So the merge runs near the speed of reading the inputs.
All inputs are opened and checked (headers, names, shapes, dtypes, architectures) before
anything is written, and the output folder appears only when complete.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pmalopti.fsutil import atomic_dir, check_output_dir
from pmalopti.merge.reader import CheckpointReader
from pmalopti.merge.safetensors_format import TensorSpec
from pmalopti.merge.select import Checkpoint, describe
from pmalopti.merge.weights import normalize_weights
from pmalopti.merge.writer import ShardedWriter, copy_model_files, write_metadata

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
DEFAULT_SHARD_SIZE = 5_000_000_000


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not supported; choose bf16, fp16 or fp32") from None


def check_compatible(readers: Sequence[CheckpointReader]) -> None:
    """Every input must hold the same tensors with the same shapes and dtypes as the newest.

    A tensor that is absent because it is tied (e.g. `lm_head.weight`) must be absent everywhere.
    """
    ref = readers[-1]
    arch = _architecture(ref)
    for r in readers[:-1]:
        other = _architecture(r)
        if arch and other and arch != other:
            raise ValueError(
                f"checkpoint {r.path} is a {other[0]} {other[1]}, but the newest checkpoint "
                f"{ref.path} is a {arch[0]} {arch[1]} (config.json); they cannot be merged"
            )
        missing = [n for n in ref.specs if n not in r.specs]
        if missing:
            raise ValueError(
                f"checkpoint {r.path} lacks tensor {missing[0]!r} that the newest checkpoint "
                f"{ref.path} has" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        extra = [n for n in r.specs if n not in ref.specs]
        if extra:
            raise ValueError(
                f"checkpoint {r.path} has tensor {extra[0]!r} that the newest checkpoint "
                f"{ref.path} lacks" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            )
        for name, spec in ref.specs.items():
            s = r.specs[name]
            if s.shape != spec.shape:
                raise ValueError(
                    f"tensor {name!r}: shape {list(s.shape)} in checkpoint {r.path} but "
                    f"{list(spec.shape)} in {ref.path}"
                )
            if s.dtype != spec.dtype:
                raise ValueError(
                    f"tensor {name!r}: dtype {s.dtype} in checkpoint {r.path} but {spec.dtype} "
                    f"in {ref.path}"
                )


def _architecture(r: CheckpointReader) -> tuple[str, str] | None:
    if not r.config:
        return None
    archs = r.config.get("architectures") or []
    return str(r.config.get("model_type")), ",".join(map(str, archs))


def _pieces(numel: int, per_piece: int) -> list[tuple[int, int]]:
    """(start, count) element ranges covering a flattened tensor; one empty piece if numel = 0."""
    return [(s, min(per_piece, numel - s)) for s in range(0, numel, per_piece)] or [(0, 0)]


class _Job:
    __slots__ = ("count", "index", "name", "start")

    def __init__(self, name: str, start: int, count: int, index: int):
        self.name, self.start, self.count, self.index = name, start, count, index


def merge_checkpoints(
    paths: Sequence[str | Path | Checkpoint],
    weights: Sequence[float],
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    force: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    threads: int = 2,
    chunk_bytes: int = 8 << 20,
    buffers: int = 16,
) -> Path:
    """Merge checkpoints (oldest first) with `weights` (normalised to sum to 1) into `out_dir`.

    Floating tensors: float32 weighted sum cast to their stored dtype, or to `dtype`
    (bf16 | fp16 | fp32). Other tensors are copied from the newest input and must be equal in
    all. The output is a Hugging Face folder (sharded safetensors of at most `shard_size` bytes,
    config and tokenizer files of the newest input, `pmalopti_merge.json` with `metadata`).
    Memory: `buffers` x `chunk_bytes` for reading plus a few pieces, whatever N and model size.
    """
    ckpts = [p if isinstance(p, Checkpoint) else describe(p) for p in paths]
    if not ckpts:
        raise ValueError("need at least one checkpoint to merge")
    if len(weights) != len(ckpts):
        raise ValueError(f"got {len(weights)} weights for {len(ckpts)} checkpoints")
    ws = normalize_weights(weights)
    out_dtype = parse_dtype(dtype)
    if threads < 1 or buffers < 2 or chunk_bytes < 64:
        raise ValueError("threads >= 1, buffers >= 2 and chunk_bytes >= 64 are required")
    out = Path(out_dir)
    check_output_dir(out, force=force, inputs=[c.path for c in ckpts])
    with ExitStack() as stack:
        readers = [stack.enter_context(CheckpointReader(c.path)) for c in ckpts]
        check_compatible(readers)
        newest = readers[-1]
        out_specs = [
            TensorSpec(
                s.name, s.shape, out_dtype if out_dtype and s.dtype.is_floating_point else s.dtype
            )
            for s in newest.specs.values()
        ]
        if newest.model_dir is None:
            log.warning(
                "newest input %s is a bare file: no config or tokenizer is copied", newest.path
            )
        record = {
            **(metadata or {}),
            "inputs": [
                {"path": str(c.path.resolve()), "step": c.step, "tokens": c.tokens, "weight": w}
                for c, w in zip(ckpts, ws, strict=True)
            ],
            "dtype": None if out_dtype is None else str(out_dtype).removeprefix("torch."),
        }
        record.setdefault("method", "explicit")
        with atomic_dir(out, force=force) as tmp:
            if newest.model_dir is not None:
                copy_model_files(newest.model_dir, tmp, dtype=out_dtype)
            stats = _stream(
                readers, ws, out_specs, tmp, shard_size, threads, chunk_bytes, buffers, progress
            )
            write_metadata(tmp, {**record, **stats})
    msg = (
        f"merged {stats['tensors']} tensors from {len(ckpts)} checkpoints: read "
        f"{stats['bytes_read'] / 1e9:.2f} GB, wrote {stats['bytes_written'] / 1e9:.2f} GB in "
        f"{stats['seconds']:.2f} s ({stats['bytes_read'] / 1e9 / max(stats['seconds'], 1e-9):.2f} GB/s read) -> {out}"
    )
    log.info(msg)
    return out.resolve()


def _stream(
    readers: list[CheckpointReader],
    ws: list[float],
    out_specs: list[TensorSpec],
    tmp: Path,
    shard_size: int,
    threads: int,
    chunk_bytes: int,
    n_buffers: int,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    n = len(readers)
    in_specs = readers[-1].specs

    def jobs() -> Iterator[_Job]:
        for s in out_specs:
            size = in_specs[s.name].dtype.itemsize
            for start, count in _pieces(math.prod(s.shape), max(1, chunk_bytes // size)):
                for i in range(n):
                    yield _Job(s.name, start, count, i)

    # Untouched pages cost nothing, so sizing every buffer for the worst case is free.
    free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
    for _ in range(n_buffers):
        free.put(torch.empty(chunk_bytes, dtype=torch.uint8))
    max_elems = chunk_bytes  # 1-byte inputs give the longest pieces
    acc = torch.empty(max_elems, dtype=torch.float32)
    scratch = torch.empty(max_elems, dtype=torch.float32)
    out_free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
    for _ in range(3):
        out_free.put(torch.empty(max_elems * 8, dtype=torch.uint8))

    total = sum(r.nbytes for r in readers)
    bar = tqdm(
        total=total, unit="B", unit_scale=True, desc="merge", disable=not progress, file=sys.stderr
    )
    writer = ShardedWriter(tmp, out_specs, shard_size)
    pending: deque[tuple[_Job, torch.Tensor, Future[torch.Tensor]]] = deque()
    written: deque[Future[None]] = deque()
    job_iter = jobs()
    with (
        ThreadPoolExecutor(threads, thread_name_prefix="merge-read") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="merge-write") as wpool,
        bar,
    ):
        try:

            def fill() -> None:
                while len(pending) < n_buffers - 1:
                    job = next(job_iter, None)
                    if job is None:
                        return
                    buf = free.get()
                    fut = pool.submit(
                        readers[job.index].read_into, job.name, job.start, job.count, buf
                    )
                    pending.append((job, buf, fut))

            def write(spec: TensorSpec, piece: torch.Tensor, obuf: torch.Tensor) -> None:
                try:
                    writer.write_part(spec.name, piece)
                finally:
                    out_free.put(obuf)

            for spec in out_specs:
                in_dtype = in_specs[spec.name].dtype
                is_float = in_dtype.is_floating_point
                for _start, count in _pieces(
                    math.prod(spec.shape), max(1, chunk_bytes // in_dtype.itemsize)
                ):
                    a = acc[:count]  # (count,) running float32 sum
                    obuf = out_free.get()
                    o = obuf[: count * spec.dtype.itemsize].view(spec.dtype)  # (count,)
                    for i in range(n):
                        fill()
                        _job, buf, fut = pending.popleft()
                        x = fut.result()  # (count,) in the stored dtype
                        if is_float:
                            _accumulate(a, scratch[:count], x, ws[i], first=i == 0)
                        elif i == 0:
                            o.copy_(x)
                        elif not torch.equal(o, x):
                            raise ValueError(
                                f"tensor {spec.name!r} is not floating point ({in_dtype}), so it is "
                                f"copied rather than averaged, but it differs between checkpoints "
                                f"{readers[0].path} and {readers[i].path}"
                            )
                        free.put(buf)
                        bar.update(x.numel() * x.element_size())
                    if is_float:
                        o.copy_(a)
                        _check_finite(o, spec.name)
                    while written and written[0].done():
                        written.popleft().result()
                    written.append(wpool.submit(write, spec, o, obuf))
            for f in written:
                f.result()
            writer.close()
        except BaseException:
            for _job, _buf, fut in pending:
                fut.cancel()
            raise
    return {
        "tensors": len(out_specs),
        "bytes_read": total,
        "bytes_written": sum(s.nbytes for s in out_specs),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _accumulate(
    acc: torch.Tensor, scratch: torch.Tensor, x: torch.Tensor, w: float, *, first: bool
) -> None:
    """acc (+)= w * x in float32. Casting into a reused buffer first is ~3x faster than a
    mixed-dtype add, and never allocates."""
    if x.dtype != torch.float32:
        scratch.copy_(x)
        x = scratch
    if first:
        torch.mul(x, w, out=acc)
    else:
        acc.add_(x, alpha=w)


def _check_finite(t: torch.Tensor, name: str) -> None:
    # A sum is finite iff every element is, barring overflow of the sum itself; check exactly
    # (10x slower) only then.
    if math.isfinite(t.sum().item()):
        return
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(
            f"merged tensor {name!r} has {bad} non-finite values (inf/nan): an input holds them, "
            "or the result overflows the output dtype (try --dtype fp32)"
        )
