"""The streaming PMA merge of Hugging Face checkpoints: M_avg = sum_i w_i M_i, piece by piece.

All inputs are opened and checked (headers, names, shapes, dtypes, architectures) before
anything is written; `pma.merge_loop` then reads every tensor in pieces from the N inputs, sums
them in float32 with numpy (`pma.arithmetic`, the same bits as torch's merges) and appends them
to the output shards; the output folder appears only when complete. Safetensors inputs are
merged without importing torch (`pytorch_model*.bin` inputs load through torch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pmalopti.pma.merge_loop import stream
from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.safetensors_format import MERGEABLE, DType, TensorSpec, parse_dtype
from pmalopti.pma.select import Checkpoint, describe
from pmalopti.pma.weights import normalize_weights
from pmalopti.pma.writer import ShardedWriter, copy_model_files, write_metadata
from pmalopti.runtime.fs import atomic_dir, check_output_dir

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 5_000_000_000
DEFAULT_CHUNK_BYTES = 16 << 20


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
                    f"tensor {name!r} in checkpoint {r.path} is {spec.dtype}, a "
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


def dtype_summary(readers: Sequence[CheckpointReader], out_dtype: DType | None) -> str:
    """One line saying what the floating tensors are written as, and why."""
    short = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}

    def names(specs) -> list[str]:
        found = {s.dtype for s in specs.values() if s.dtype.is_floating_point}
        return sorted(short.get(d.code, d.name) for d in found)

    newest = names(readers[-1].specs)
    seen = sorted({d for r in readers for d in names(r.specs)})
    if out_dtype is not None:
        line = f"output dtype: {short.get(out_dtype.code, out_dtype.name)} (--dtype)"
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


def merge_checkpoints(
    paths: Sequence[str | Path | Checkpoint],
    weights: Sequence[float],
    out_dir: str | Path,
    *,
    dtype: str | DType | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    force: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    workers: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    read_ahead: int | None = None,
) -> Path:
    """Merge checkpoints (oldest first) with `weights` (normalised to sum to 1) into `out_dir`.

    Floating tensors: float32 weighted sum (`pma.arithmetic`) rounded to the newest checkpoint's
    dtype, or to `dtype` (bf16 | fp16 | fp32); inputs may differ in floating dtype; FP8 is
    refused. Other tensors are copied from the newest input and must be equal in all. The output
    is a Hugging Face folder (sharded safetensors of at most `shard_size` bytes, config and
    tokenizer files of the newest input, `pmalopti_merge.json` with `metadata`).
    Memory: a few pieces of `chunk_bytes` (a piece's bytes in all N inputs and its output) per
    worker thread (default: one per core, at most 8), whatever N and the model size.
    `read_ahead`: bytes to ask the kernel to prefetch ahead of each read, per input file (for
    network filesystems; e.g. 16 MiB).
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
            "dtype": None if out_dtype is None else out_dtype.name,
        }
        record.setdefault("method", "explicit")
        with atomic_dir(out, force=force) as tmp:
            if newest.model_dir is not None:
                copy_model_files(newest.model_dir, tmp, dtype=out_dtype)
            writer = ShardedWriter(tmp, out_specs, shard_size)
            stats = stream(
                readers,
                ws,
                out_specs,
                writer,
                workers=workers,
                chunk_bytes=chunk_bytes,
                progress=progress,
            )
            write_metadata(tmp, {**record, **stats})
    gb_read, secs = stats["bytes_read"] / 1e9, stats["seconds"]
    log.info(summary)
    log.info(
        f"merged {stats['tensors']} tensors from {len(ckpts)} checkpoints: read {gb_read:.2f} GB, "
        f"wrote {stats['bytes_written'] / 1e9:.2f} GB in {secs:.2f} s "
        f"({gb_read / max(secs, 1e-9):.2f} GB/s read) -> {out}"
    )
    return out.resolve()
