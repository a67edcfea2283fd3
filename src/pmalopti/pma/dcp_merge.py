"""PMA on distributed checkpoints: M_avg = sum_i w_i M_i over DCP folders, written back as DCP.

Inputs are read through DCP's own metadata and storage reader (`pmalopti.pma.dcp_read`), one
stored chunk at a time: for each chunk of the newest checkpoint, the same region is read from
every input (resharded by DCP's planner helpers when the inputs were saved with another world
size), accumulated in float32 and cast back (docs/design.md, "Merging"). The output is written by
DCP's own `FileSystemWriter` with the newest checkpoint's keys and chunks, each chunk computed only
when the writer asks for it, so peak memory is a few chunks, never the model or N copies of it.
`dcp.load` loads the result into the same (FSDP2-sharded) model, so the trainer that saved the
inputs resumes, or starts continued training / SFT, from the merge.

Model entries are told apart from the rest by `dcp_layout.model_key_rule`. Floating model tensors
are averaged; integer model tensors are copied from the newest input and must be equal in all;
model bytes entries (e.g. Megatron's `_extra_state`) are copied from the newest. Everything else
(optimizer moments, schedulers, data loaders, step counters) is dropped, or with
`keep_non_model=True` copied unchanged from the newest input, for a resume; never averaged.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    BytesIOWriteData,
    SavePlan,
    SavePlanner,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from tqdm import tqdm

from pmalopti.pma.arithmetic import fold
from pmalopti.pma.dcp_layout import DcpCheckpoint, copy_side_files, model_key_rule
from pmalopti.pma.dcp_read import DcpSource
from pmalopti.pma.safetensors_format import parse_dtype
from pmalopti.pma.weights import normalize_weights
from pmalopti.pma.writer import write_metadata
from pmalopti.runtime.fs import atomic_dir, check_output_dir

log = logging.getLogger(__name__)


class Plan:
    """What the merge writes: per key, 'average' | 'copy' (from the newest input) | dropped."""

    def __init__(
        self,
        sources: list[DcpSource],
        ckpts: list[DcpCheckpoint],
        *,
        keep_non_model: bool,
        model_prefix: Sequence[str] | None,
        dtype: torch.dtype | None,
    ) -> None:
        newest = sources[-1]
        keys = list(newest.entries)
        is_model, self.rule = model_key_rule(ckpts[-1].layout, model_prefix)
        self.model = [k for k in keys if is_model(k)]
        if not self.model:
            raise ValueError(
                f"DCP checkpoint {ckpts[-1].path}: no model keys by the rule {self.rule} "
                f"(keys look like {keys[:3]}); pass --model-prefix"
            )
        self.dropped = set() if keep_non_model else {k for k in keys if not is_model(k)}
        self.action: dict[str, str] = {}
        for k in keys:
            if k in self.dropped:
                continue
            md = newest.entries[k]
            floating = (
                isinstance(md, TensorStorageMetadata) and md.properties.dtype.is_floating_point
            )
            self.action[k] = "average" if is_model(k) and floating else "copy"
        check_compatible(sources, ckpts, self.model, model_prefix)
        self.dtype = dtype

    def out_metadata(
        self, newest: DcpSource
    ) -> dict[str, TensorStorageMetadata | BytesStorageMetadata]:
        out: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
        for k, act in self.action.items():
            md = newest.entries[k]
            if act == "average" and self.dtype is not None:
                assert isinstance(md, TensorStorageMetadata)
                props = TensorProperties(dtype=self.dtype)
                md = TensorStorageMetadata(props, md.size, list(md.chunks))
            out[k] = md
        return out


def check_compatible(
    sources: list[DcpSource],
    ckpts: list[DcpCheckpoint],
    model_keys: list[str],
    model_prefix: Sequence[str] | None = None,
) -> None:
    """Every input holds the newest input's model keys, as tensors of the same shapes, and no more."""
    newest, ref = sources[-1], ckpts[-1].path
    wanted = set(model_keys)
    for src, ck in zip(sources[:-1], ckpts[:-1], strict=True):
        missing = [k for k in model_keys if k not in src.entries]
        if missing:
            raise ValueError(
                f"DCP checkpoint {ck.path} lacks model key {missing[0]!r} that the newest "
                f"checkpoint {ref} has"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        is_model = model_key_rule(ck.layout, model_prefix)[0]
        extra = [k for k in src.entries if k not in wanted and is_model(k)]
        if extra:
            raise ValueError(
                f"DCP checkpoint {ck.path} has model key {extra[0]!r} that the newest checkpoint "
                f"{ref} lacks"
            )
        for k in model_keys:
            a, b = src.entries[k], newest.entries[k]
            if isinstance(a, TensorStorageMetadata) != isinstance(b, TensorStorageMetadata):
                raise ValueError(
                    f"key {k!r} is a tensor in one of {ck.path}, {ref} and bytes in the other"
                )
            if not isinstance(a, TensorStorageMetadata) or not isinstance(b, TensorStorageMetadata):
                continue
            if tuple(a.size) != tuple(b.size):
                raise ValueError(
                    f"tensor {k!r}: shape {list(a.size)} in {ck.path} but {list(b.size)} in {ref}"
                )
            da, db = a.properties.dtype, b.properties.dtype
            if da != db and not (da.is_floating_point and db.is_floating_point):
                raise ValueError(f"tensor {k!r}: dtype {da} in {ck.path} but {db} in {ref}")


class _MergePlanner(SavePlanner):
    """A SavePlanner whose data are computed on demand: the writer pulls one chunk at a time."""

    def __init__(self, plan: Plan, sources: list[DcpSource], ws: list[float], bar: tqdm) -> None:
        self.plan, self.sources, self.ws, self.bar = plan, sources, ws, bar
        self.errors: list[BaseException] = []

    def set_up_planner(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - unused
        pass

    def create_local_plan(self) -> SavePlan:  # pragma: no cover - unused
        return SavePlan([])

    def create_global_plan(self, all_plans):  # pragma: no cover - unused
        return all_plans, Metadata({})

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:  # pragma: no cover - unused
        return new_plan

    def resolve_data(self, item: WriteItem) -> torch.Tensor | io.BytesIO:
        # DCP's writer threads swallow exceptions: keep the first one for the caller to raise.
        try:
            return self._resolve(item)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def _resolve(self, item: WriteItem) -> torch.Tensor | io.BytesIO:
        key = item.index.fqn
        newest = self.sources[-1]
        if item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(newest.read_bytes(key))
        assert item.tensor_data is not None
        chunk = item.tensor_data.chunk
        out_dtype = item.tensor_data.properties.dtype
        if self.plan.action[key] == "copy":
            x = newest.read(
                key,
                chunk,
                torch.empty(tuple(chunk.sizes), dtype=newest.tensor(key).properties.dtype),
            )
            if key in self.plan.model:  # integer model tensors must agree (docs/design.md)
                for src in self.sources[:-1]:
                    other = src.read(key, chunk, torch.empty_like(x))
                    if not torch.equal(other, x):
                        raise ValueError(
                            f"tensor {key!r} is not floating point ({x.dtype}), so it is copied "
                            f"rather than averaged, but it differs between {src.path} and {newest.path}"
                        )
            self.bar.update(x.nbytes)
            return x
        acc = average_region(self.sources, self.ws, key, chunk)
        out = cast_checked(acc, out_dtype, key)
        self.bar.update(out.nbytes * len(self.sources))
        return out


def average_region(
    sources: Sequence[DcpSource], ws: Sequence[float], key: str, chunk: ChunkStorageMetadata
) -> torch.Tensor:
    """sum_i w_i * (region `chunk` of `key` in input i), accumulated in float32."""
    acc = torch.empty(tuple(chunk.sizes), dtype=torch.float32)  # (chunk sizes) running sum
    scratch = torch.empty_like(acc)
    for i, (src, w) in enumerate(zip(sources, ws, strict=True)):
        src.read(key, chunk, scratch)  # stored dtype -> float32 on copy
        fold(acc, scratch, w, first=i == 0, scratch=True)
    return acc


def cast_checked(acc: torch.Tensor, dtype: torch.dtype, key: str) -> torch.Tensor:
    out = acc.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"merged tensor {key!r} has non-finite values (inf/nan): an input holds them, "
            "or the result overflows the output dtype (try --dtype fp32)"
        )
    return out


def _write_items(
    entries: Mapping[str, TensorStorageMetadata | BytesStorageMetadata],
) -> list[WriteItem]:
    items = []
    for k, md in entries.items():
        if isinstance(md, BytesStorageMetadata):
            items.append(WriteItem(MetadataIndex(k), WriteItemType.BYTE_IO, BytesIOWriteData(0)))
            continue
        whole = len(md.chunks) == 1 and tuple(md.chunks[0].sizes) == tuple(md.size)
        for c in md.chunks:
            items.append(
                WriteItem(
                    MetadataIndex(k, c.offsets),
                    WriteItemType.TENSOR if whole else WriteItemType.SHARD,
                    tensor_data=TensorWriteData(
                        ChunkStorageMetadata(c.offsets, c.sizes), md.properties, md.size
                    ),
                )
            )
    return items


def write_dcp(
    plan: Plan,
    sources: list[DcpSource],
    ws: list[float],
    out_dir: Path,
    *,
    threads: int,
    progress: bool,
) -> dict[str, Any]:
    """Write the merge as a DCP folder with DCP's FileSystemWriter; returns byte counts and time."""
    t0 = time.perf_counter()
    newest = sources[-1]
    entries = plan.out_metadata(newest)
    planner_data = newest.metadata.planner_data
    if isinstance(planner_data, dict):
        planner_data = {k: v for k, v in planner_data.items() if k in entries}
    md = Metadata(state_dict_metadata=dict(entries), planner_data=planner_data)
    writer = FileSystemWriter(str(out_dir), thread_count=threads, sync_files=False)
    writer.set_up_storage_writer(True, rank=0, use_collectives=True)
    save_plan = writer.prepare_global_plan(
        [writer.prepare_local_plan(SavePlan(_write_items(entries)))]
    )[0]
    averaged = sum(_nbytes(newest.entries[k]) for k, a in plan.action.items() if a == "average")
    total = averaged * len(sources) + sum(
        _nbytes(newest.entries[k]) for k, a in plan.action.items() if a == "copy"
    )
    bar = tqdm(
        total=total, unit="B", unit_scale=True, desc="merge", disable=not progress, file=sys.stderr
    )
    planner = _MergePlanner(plan, sources, ws, bar)
    with bar:
        try:
            results = writer.write_data(save_plan, planner).wait()
        except BaseException:
            if planner.errors:  # the one the writer's own thread raised first
                raise planner.errors[0] from None
            raise
    if planner.errors:
        raise planner.errors[0]
    if len(results) != len(save_plan.items):  # pragma: no cover - a writer thread died silently
        raise RuntimeError(f"DCP writer wrote {len(results)} of {len(save_plan.items)} items")
    writer.finish(md, [results])
    return {
        "keys_written": len(entries),
        "keys_dropped": len(plan.dropped),
        "bytes_read": total,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _nbytes(md: TensorStorageMetadata | BytesStorageMetadata) -> int:
    if not isinstance(md, TensorStorageMetadata):
        return 0
    return md.size.numel() * md.properties.dtype.itemsize


def merge_dcp(
    ckpts: Sequence[DcpCheckpoint],
    weights: Sequence[float],
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    keep_non_model: bool = False,
    model_prefix: Sequence[str] | None = None,
    out_format: Literal["dcp", "hf"] = "dcp",
    hf_config: str | Path | None = None,
    shard_size: int = 5_000_000_000,
    force: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    threads: int | None = None,
    tokens: Sequence[int | None] | None = None,
) -> Path:
    """Merge DCP checkpoints (oldest first) with `weights` into a DCP checkpoint at `out_dir`.

    The output mirrors the newest input: the DCP folder sits at `out_dir` itself, or at
    `out_dir/model_and_optim` (OLMo-core) / `out_dir/pytorch_model_fsdp_0` (accelerate) when the
    inputs were given as the folders holding those.
    """
    ckpts = list(ckpts)
    if not ckpts:
        raise ValueError("need at least one checkpoint to merge")
    if len(weights) != len(ckpts):
        raise ValueError(f"got {len(weights)} weights for {len(ckpts)} checkpoints")
    if len({c.subdir for c in ckpts}) > 1:
        raise ValueError(
            f"give every input the same way: {ckpts[0].path} and {ckpts[-1].path} are not "
            "both checkpoint folders or both DCP folders"
        )
    if out_format not in ("dcp", "hf"):
        raise ValueError(f"format: {out_format!r} is not allowed; choose 'dcp' or 'hf'")
    if out_format == "hf" and keep_non_model:
        raise ValueError("--keep-non-model is for DCP output; a HF folder holds the model only")
    dtype = parse_dtype(dtype)
    dtype = None if dtype is None else dtype.torch
    ws = normalize_weights(weights)
    out = Path(out_dir)
    check_output_dir(out, force=force, inputs=[c.path for c in ckpts])
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    sources = [DcpSource(c.dcp_dir) for c in ckpts]
    plan = Plan(
        sources, ckpts, keep_non_model=keep_non_model, model_prefix=model_prefix, dtype=dtype
    )
    if out_format == "hf":
        from pmalopti.pma.dcp_hf import HfTarget

        target = HfTarget(ckpts[-1], plan, sources[-1], hf_config)
    record = {
        **(metadata or {}),
        "format": out_format,
        "layout": str(ckpts[-1].layout),
        "model_keys": plan.rule,
        "non_model": "copied from the newest input" if keep_non_model else "dropped",
        "inputs": [
            {"path": str(c.path.resolve()), "step": c.step, "tokens": t, "weight": w}
            for c, w, t in zip(ckpts, ws, tokens or [None] * len(ckpts), strict=True)
        ],
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
    }
    record.setdefault("method", "explicit")
    with atomic_dir(out, force=force, inputs=[c.path for c in ckpts], kind="merge") as tmp:
        if out_format == "hf":
            record["hf_mapping"] = target.mapping
            stats = target.write(sources, ws, tmp, dtype=dtype, shard_size=shard_size)
        else:
            (tmp / ckpts[-1].subdir).mkdir(parents=True, exist_ok=True)
            stats = write_dcp(
                plan, sources, ws, tmp / ckpts[-1].subdir, threads=threads, progress=progress
            )
            record["side_files"] = copy_side_files(ckpts[-1], tmp, keep_non_model=keep_non_model)
        write_metadata(tmp, {**record, **stats})
    log.info(
        "merged %d DCP checkpoints (%s) into %s (%s) in %.2f s",
        len(ckpts), ckpts[-1].layout, out, out_format, stats["seconds"],
    )  # fmt: skip
    return out.resolve()
