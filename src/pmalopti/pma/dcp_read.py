"""Read a DCP checkpoint region by region through DCP's own metadata and storage reader.

`FileSystemReader.read_metadata()` gives every key's global shape, dtype and stored chunks;
`create_read_items_for_chunk_list` computes which stored chunks overlap a wanted region (the
resharding DCP itself uses to load into a different sharding); `FileSystemReader.read_data` reads
those pieces (undoing any storage transform) and copies them, cast, into a buffer we own. Memory
per read is the wanted region plus the stored chunks it touches, never the whole checkpoint.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from pmalopti.pma.dcp_layout import METADATA


def _narrow(t: torch.Tensor, offsets: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    for dim, (o, n) in enumerate(zip(offsets, lengths, strict=True)):
        t = t.narrow(dim, o, n)
    return t


class _IntoBuffer(LoadPlanner):
    """A LoadPlanner that puts every tensor piece into one buffer and keeps bytes as they come."""

    def __init__(self, out: torch.Tensor | None = None) -> None:
        self.out = out
        self.bytes: bytes | None = None
        self.filled = 0

    def set_up_planner(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - unused
        pass

    def create_local_plan(self) -> LoadPlan:  # pragma: no cover - unused
        return LoadPlan([])

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:  # pragma: no cover
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:  # pragma: no cover - unused
        return central_plan

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        self.bytes = value.getvalue()

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        assert self.out is not None
        return _narrow(self.out, read_item.dest_offsets, read_item.lengths)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        self.filled += tensor.numel()


class DcpSource:
    """One DCP folder: `metadata` up front, `read(key, chunk, out)` and `read_bytes(key)` lazily.

    Safe to use from several threads (each call builds its own plan and planner).
    """

    def __init__(self, dcp_dir: str | Path):
        self.path = Path(dcp_dir)
        if not (self.path / METADATA).is_file():
            raise FileNotFoundError(f"DCP folder {self.path} has no {METADATA} file")
        self.reader = FileSystemReader(str(self.path))
        try:
            md = self.reader.read_metadata()
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
            raise ValueError(f"{self.path / METADATA}: cannot read DCP metadata ({exc})") from exc
        if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict):
            raise ValueError(f"{self.path / METADATA}: not DCP metadata")
        self.reader.set_up_storage_reader(md, True)
        self.metadata: Metadata = md
        self.entries: dict[str, TensorStorageMetadata | BytesStorageMetadata] = (
            md.state_dict_metadata
        )

    def tensor(self, key: str) -> TensorStorageMetadata:
        md = self.entries.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise KeyError(f"DCP folder {self.path} has no tensor {key!r}")
        return md

    def read(self, key: str, chunk: ChunkStorageMetadata, out: torch.Tensor) -> torch.Tensor:
        """Fill `out` (shape `chunk.sizes`, any dtype: values are cast) with that region of `key`."""
        md = self.tensor(key)
        if tuple(out.shape) != tuple(chunk.sizes):
            raise ValueError(f"buffer shape {tuple(out.shape)} != region {tuple(chunk.sizes)}")
        items = create_read_items_for_chunk_list(key, md, [chunk])
        planner = _IntoBuffer(out)
        try:
            self.reader.read_data(LoadPlan(items), planner).wait()
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ValueError(f"DCP folder {self.path}: cannot read tensor {key!r} ({exc})") from exc
        if planner.filled != out.numel():
            raise ValueError(
                f"DCP folder {self.path}: the stored chunks of tensor {key!r} do not cover "
                f"region offsets {list(chunk.offsets)} sizes {list(chunk.sizes)}"
            )
        return out

    def read_bytes(self, key: str) -> bytes:
        from torch.distributed.checkpoint.metadata import MetadataIndex
        from torch.distributed.checkpoint.planner import LoadItemType

        if not isinstance(self.entries.get(key), BytesStorageMetadata):
            raise KeyError(f"DCP folder {self.path} has no bytes entry {key!r}")
        item = ReadItem(
            type=LoadItemType.BYTE_IO,
            dest_index=MetadataIndex(key),
            dest_offsets=torch.Size((0,)),
            storage_index=MetadataIndex(key),
            storage_offsets=torch.Size((0,)),
            lengths=torch.Size((0,)),
        )
        planner = _IntoBuffer()
        try:
            self.reader.read_data(LoadPlan([item]), planner).wait()
        except (OSError, KeyError) as exc:
            raise ValueError(f"DCP folder {self.path}: cannot read entry {key!r} ({exc})") from exc
        assert planner.bytes is not None
        return planner.bytes
