"""Write an online merge of a sharded (FSDP2 / DTensor) model without any rank holding the model.

`OnlineAverager` keeps each rank's shard of the running average. Two ways to write it:

- `save_merge_dcp`: every rank saves its own shards with `torch.distributed.checkpoint` into one
  DCP folder; nothing is gathered anywhere. `dcp.load` reads it into the same sharded model (any
  world size), and `pmalopti merge <folder> --format hf` turns it into a HF folder offline.
- `save_merge_hf`: a HF safetensors folder written by rank 0, tensor by tensor: for each tensor
  the shards are gathered to rank 0 only (`dist.gather`, for FSDP2's row sharding `Shard(0)` on a
  1-D mesh; other placements go through `full_tensor()`, one tensor at a time), appended to its
  shard file and freed. Rank 0 holds one whole tensor at a time, the other ranks their shard.

Both are collectives: call them on every rank. The output folder is made by rank 0 and renamed
into place when complete (`pmalopti.runtime.fs.atomic_dir`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pmalopti.pma.online import OnlineAverager
from pmalopti.pma.safetensors_format import TensorSpec, dtype_of
from pmalopti.pma.writer import ShardedWriter, copy_model_files, write_metadata
from pmalopti.runtime.fs import atomic_dir

try:
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = Shard = None  # type: ignore[assignment,misc]


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def shared_output_dir(out: str | Path, *, force: bool) -> Iterator[tuple[Path, bool]]:
    """(temporary folder, is rank 0): made by rank 0, its path broadcast to every rank, renamed
    into place by rank 0 once every rank has finished writing. A refusal on rank 0 (the output
    exists) is raised on every rank."""
    rank, world = _rank_world()
    if world == 1:
        with atomic_dir(out, force=force, kind="merge") as tmp:
            yield tmp, True
        return
    ctx = atomic_dir(out, force=force, kind="merge")
    msg: list[Any] = [None]
    if rank == 0:
        try:
            msg = [str(ctx.__enter__())]
        except (OSError, ValueError) as exc:
            msg = [exc]
    dist.broadcast_object_list(msg, src=0)
    if isinstance(msg[0], Exception):
        raise msg[0]
    try:
        yield Path(msg[0]), rank == 0
        dist.barrier()  # every rank's files are complete
    except BaseException as exc:
        if rank == 0:
            ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if rank == 0:
        ctx.__exit__(None, None, None)
    dist.barrier()  # the folder is in place before anyone reads it


def gather_to_rank0(t: torch.Tensor, local: torch.Tensor) -> torch.Tensor | None:
    """The whole tensor `t` (whose shard on this rank is `local`) on rank 0, None elsewhere.

    FSDP2 `Shard(0)` on a 1-D mesh: shards (torch.chunk sizes, the last may be short or empty)
    are padded to one size and `dist.gather`-ed to the mesh's first rank, so no other rank ever
    holds more than its shard. Other placements: `full_tensor()` (every rank, this tensor only).
    """
    if DTensor is None or not isinstance(t, DTensor):
        return local if _rank_world()[0] == 0 else None
    mesh, placements = t.device_mesh, tuple(t.placements)
    if mesh.ndim == 1 and placements == (Shard(0),):
        group = mesh.get_group()
        world, me = dist.get_world_size(group), dist.get_rank(group)
        rows = t.shape[0]
        per = -(-rows // world)  # torch.chunk's chunk size
        pad = torch.zeros((per, *t.shape[1:]), dtype=local.dtype, device=t.device)  # (per, ...)
        pad[: local.shape[0]].copy_(local)
        dst = dist.get_global_rank(group, 0)
        if me != 0:
            dist.gather(pad, None, dst=dst, group=group)
            return None
        whole = torch.empty((world * per, *t.shape[1:]), dtype=local.dtype, device=t.device)
        dist.gather(pad, list(whole.split(per)), dst=dst, group=group)  # into views: no copy
        return whole[:rows]
    full = DTensor.from_local(
        local.to(t.device), mesh, placements, shape=t.shape, stride=t.stride()
    ).full_tensor()
    return full if dist.get_rank() == 0 else None


def save_merge_hf(
    averager: OnlineAverager,
    out: str | Path,
    *,
    dtype: torch.dtype | None = None,
    source_dir: str | Path | None = None,
    shard_size: int = 5_000_000_000,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """The latest merge as a HF folder (config/tokenizer from `source_dir`), written by rank 0."""
    specs = []
    for name, t in averager.tracked:
        out_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
        specs.append(TensorSpec(name, tuple(t.shape), dtype_of(out_dtype)))
    with shared_output_dir(out, force=force) as (tmp, writes):
        writer = ShardedWriter(tmp, specs, shard_size) if writes else None
        for name, t, local in averager.merged_items(dtype=dtype):
            whole = gather_to_rank0(t, local)
            if writer is not None:
                assert whole is not None
                writer.write(name, whole.detach().cpu().contiguous())
            del whole
        if writer is not None:
            writer.close()
            if source_dir is not None:
                copy_model_files(Path(source_dir), tmp)
            write_metadata(tmp, {**(metadata or {}), "format": "hf"})
    return Path(out).resolve()


def save_merge_dcp(
    averager: OnlineAverager,
    out: str | Path,
    *,
    dtype: torch.dtype | None = None,
    source_dir: str | Path | None = None,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """The latest merge as one DCP folder, every rank writing its own shards (nothing gathered).

    Keys are the model's parameter names. A merged shard kept on the CPU (`device="cpu"`) is
    moved to its parameter's device to be wrapped as a DTensor, one local shard per tensor.
    """
    import torch.distributed.checkpoint as dcp

    sd = {}
    for name, t, local in averager.merged_items(dtype=dtype):
        if DTensor is not None and isinstance(t, DTensor):
            local = DTensor.from_local(
                local, t.device_mesh, t.placements, shape=t.shape, stride=t.stride()
            )
        sd[name] = local
    with shared_output_dir(out, force=force) as (tmp, writes):
        dcp.save(sd, checkpoint_id=str(tmp), no_dist=_rank_world()[1] == 1)
        if writes:
            if source_dir is not None:
                copy_model_files(Path(source_dir), tmp)
            write_metadata(tmp, {**(metadata or {}), "format": "dcp"})
    return Path(out).resolve()
