"""The streaming PMA merge: M_avg = sum_i w_i M_i, one tensor piece at a time.

Every tensor is cut into pieces of at most `chunk_bytes` of input. Worker threads each take a
piece, read it from the N inputs (`pread` into a reused buffer) and accumulate the weighted sum
in float32 (docs/design.md "Merging"); the calling thread appends finished pieces, in order, to the
output shard. File reads, torch kernels and file writes release the GIL, so reading, summing
and writing overlap, and memory is a few pieces per worker whatever N and the model size.
All inputs are opened and checked (headers, names, shapes, dtypes, architectures) before
anything is written, and the output folder appears only when complete.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.safetensors_format import TensorSpec
from pmalopti.pma.select import Checkpoint, describe
from pmalopti.pma.weights import normalize_weights
from pmalopti.pma.writer import ShardedWriter, copy_model_files, write_metadata
from pmalopti.runtime.fs import atomic_dir, check_output_dir

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


# Floating dtypes that are averaged; inputs may differ among these (a bf16 model and its fp32
# fine-tune): every sum is float32 whatever they are.
MERGEABLE = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


def check_compatible(readers: Sequence[CheckpointReader]) -> None:
    """Every input must hold the same tensors with the same shapes as the newest, and dtypes that
    are equal or both mergeable floating dtypes; quantized (FP8) tensors are refused.

    A tensor that is absent because it is tied (e.g. `lm_head.weight`) must be absent everywhere.
    """
    ref = readers[-1]
    arch = _architecture(ref)
    for r in readers:
        quant = (r.config or {}).get("quantization_config")
        if quant:
            how = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
            raise ValueError(
                f"checkpoint {r.path} is quantized ({how}, config.json quantization_config): its "
                "integer weights cannot be averaged without their scales; dequantize first"
            )
        for name, spec in r.specs.items():
            if spec.dtype.is_floating_point and spec.dtype not in MERGEABLE:
                raise ValueError(
                    f"tensor {name!r} in checkpoint {r.path} is {_dtype_name(spec.dtype)}, a "
                    "quantized dtype: averaging it without its scales would be wrong; "
                    "dequantize the checkpoints to bf16/fp32 first"
                )
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
            if s.dtype != spec.dtype and not (s.dtype in MERGEABLE and spec.dtype in MERGEABLE):
                raise ValueError(
                    f"tensor {name!r}: dtype {s.dtype} in checkpoint {r.path} but {spec.dtype} "
                    f"in {ref.path}"
                )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_summary(readers: Sequence[CheckpointReader], out_dtype: torch.dtype | None) -> str:
    """One line saying what the floating tensors are written as, and why."""
    short = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

    def names(specs) -> list[str]:
        found = {s.dtype for s in specs.values() if s.dtype.is_floating_point}
        return sorted(short.get(d, _dtype_name(d)) for d in found)

    newest = names(readers[-1].specs)
    seen = sorted({d for r in readers for d in names(r.specs)})
    if out_dtype is not None:
        line = f"output dtype: {short.get(out_dtype, _dtype_name(out_dtype))} (--dtype)"
    else:
        line = f"output dtype: {'/'.join(newest) or 'none'} (the newest checkpoint's)"
    if len(seen) > 1:
        line += f"; inputs hold {', '.join(seen)}, summed in fp32"
    return line


def _architecture(r: CheckpointReader) -> tuple[str, str] | None:
    if not r.config:
        return None
    archs = r.config.get("architectures") or []
    return str(r.config.get("model_type")), ",".join(map(str, archs))


def _pieces(numel: int, per_piece: int) -> list[tuple[int, int]]:
    """(start, count) element ranges covering a flattened tensor; one empty piece if numel = 0."""
    return [(s, min(per_piece, numel - s)) for s in range(0, numel, per_piece)] or [(0, 0)]


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
    workers: int | None = None,
    chunk_bytes: int = 1 << 20,
    read_ahead: int | None = None,
) -> Path:
    """Merge checkpoints (oldest first) with `weights` (normalised to sum to 1) into `out_dir`.

    Floating tensors: float32 weighted sum cast to the newest checkpoint's dtype, or to `dtype`
    (bf16 | fp16 | fp32); inputs may differ in floating dtype. FP8 is refused. Other tensors are copied from the newest input and must be equal in
    all. The output is a Hugging Face folder (sharded safetensors of at most `shard_size` bytes,
    config and tokenizer files of the newest input, `pmalopti_merge.json` with `metadata`).
    Memory: a few pieces of `chunk_bytes` per worker thread (default: one per core, at most 8),
    whatever N and the model size. `read_ahead`: bytes to ask the kernel to prefetch ahead of
    each read, per input file (for network filesystems; e.g. 16 MiB).
    """
    ckpts = [p if isinstance(p, Checkpoint) else describe(p) for p in paths]
    if not ckpts:
        raise ValueError("need at least one checkpoint to merge")
    if len(weights) != len(ckpts):
        raise ValueError(f"got {len(weights)} weights for {len(ckpts)} checkpoints")
    ws = normalize_weights(weights)
    out_dtype = parse_dtype(dtype)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers < 1 or chunk_bytes < 64:
        raise ValueError("workers >= 1 and chunk_bytes >= 64 are required")
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out = Path(out_dir)
    check_output_dir(out, force=force, inputs=[c.path for c in ckpts])
    with ExitStack() as stack:
        readers = [stack.enter_context(CheckpointReader(c.path)) for c in ckpts]
        check_compatible(readers)
        if read_ahead:
            for r in readers:
                r.read_ahead = read_ahead
        summary = dtype_summary(readers, out_dtype)  # logged once the merge succeeded
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
            stats = _stream(readers, ws, out_specs, tmp, shard_size, workers, chunk_bytes, progress)
            write_metadata(tmp, {**record, **stats})
    gb_read, secs = stats["bytes_read"] / 1e9, stats["seconds"]
    log.info(summary)
    log.info(
        f"merged {stats['tensors']} tensors from {len(ckpts)} checkpoints: read {gb_read:.2f} GB, "
        f"wrote {stats['bytes_written'] / 1e9:.2f} GB in {secs:.2f} s "
        f"({gb_read / max(secs, 1e-9):.2f} GB/s read) -> {out}"
    )
    return out.resolve()


def _stream(
    readers: list[CheckpointReader],
    ws: list[float],
    out_specs: list[TensorSpec],
    tmp: Path,
    shard_size: int,
    workers: int,
    chunk_bytes: int,
    progress: bool,
) -> dict[str, Any]:
    """Pieces are merged by `workers` threads (each reads its piece from the N inputs and sums
    it) and written in order by this thread; pread, torch kernels and write all release the GIL,
    so reading, summing and writing overlap on as many cores as there are workers."""
    t0 = time.perf_counter()
    # Per tensor: each input's dtype (they may differ among floating dtypes) and the largest
    # item size, which sets how many elements fit a piece of `chunk_bytes`.
    in_dtypes = {s.name: [r.specs[s.name].dtype for r in readers] for s in out_specs}
    floating = {n: d[-1].is_floating_point for n, d in in_dtypes.items()}
    pieces = [
        (spec, start, count)
        for spec in out_specs
        for start, count in _pieces(
            math.prod(spec.shape),
            max(1, chunk_bytes // max(d.itemsize for d in in_dtypes[spec.name])),
        )
    ]
    local = threading.local()

    def merge_piece(spec: TensorSpec, start: int, count: int, obuf: torch.Tensor) -> torch.Tensor:
        if not hasattr(local, "read"):
            # Per-thread buffers, reused for every piece; untouched pages cost no memory, so
            # sizing them for the worst case (1-byte inputs, float32 sums) is free.
            local.read = torch.empty(chunk_bytes, dtype=torch.uint8)
            local.acc = torch.empty(chunk_bytes, dtype=torch.float32)
            local.scratch = torch.empty(chunk_bytes, dtype=torch.float32)
        acc = local.acc[:count]  # (count,) running float32 sum
        o = obuf[: count * spec.dtype.itemsize].view(spec.dtype)  # (count,)
        if not floating[spec.name]:
            for i, r in enumerate(readers):
                x = r.read_into(spec.name, start, count, local.read)  # (count,) as stored
                if i == 0:
                    o.copy_(x)
                elif not torch.equal(o, x):
                    raise ValueError(
                        f"tensor {spec.name!r} is not floating point ({x.dtype}), so it is "
                        f"copied rather than averaged, but it differs between checkpoints "
                        f"{readers[0].path} and {r.path}"
                    )
            return o
        for i, r in enumerate(readers):
            x = r.read_into(spec.name, start, count, local.read)  # (count,) as stored
            _accumulate(acc, local.scratch[:count], x, ws[i], first=i == 0)
        o.copy_(acc)
        _check_finite(o, spec.name)
        return o

    total = sum(r.nbytes for r in readers)
    writer = ShardedWriter(tmp, out_specs, shard_size)
    # One output buffer per piece in flight: the bound on memory, whatever N and the model.
    free = [torch.empty(chunk_bytes * 4, dtype=torch.uint8) for _ in range(2 * workers)]
    pending: deque[tuple[TensorSpec, torch.Tensor, Future[torch.Tensor]]] = deque()
    todo = iter(pieces)
    threads = torch.get_num_threads()
    # Parallelism comes from the workers; intra-op threads on top would oversubscribe the cores.
    torch.set_num_threads(1)
    bar = tqdm(
        total=total, unit="B", unit_scale=True, desc="merge", disable=not progress, file=sys.stderr
    )
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="pmalopti-merge") as pool, bar:
            try:
                while True:
                    while free:
                        piece = next(todo, None)
                        if piece is None:
                            break
                        obuf = free.pop()
                        pending.append((piece[0], obuf, pool.submit(merge_piece, *piece, obuf)))
                    if not pending:
                        break
                    spec, obuf, fut = pending.popleft()
                    o = fut.result()
                    writer.write_part(spec.name, o)
                    free.append(obuf)
                    bar.update(o.numel() * sum(d.itemsize for d in in_dtypes[spec.name]))
                writer.close()
            except BaseException:
                for _spec, _obuf, fut in pending:
                    fut.cancel()
                raise
    finally:
        torch.set_num_threads(threads)
    return {
        "tensors": len(out_specs),
        "bytes_read": total,
        "bytes_written": sum(s.nbytes for s in out_specs),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _accumulate(
    acc: torch.Tensor, scratch: torch.Tensor, x: torch.Tensor, w: float, *, first: bool
) -> None:
    """acc (+)= w * x in float32, casting x into a reused buffer (no allocation per piece)."""
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
