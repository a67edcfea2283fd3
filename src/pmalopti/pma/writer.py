"""Write a Hugging Face model folder: sharded safetensors + index, config and tokenizer files.

`write_hf_checkpoint` is the one-call form (used by training callbacks); `plan_shards` and
`ShardedWriter` are the streaming pieces the merge drives piece by piece: each shard's header is
laid out from the tensor specs before its first byte, so data is appended as it is computed
(torch tensors, or raw bytes with `write_bytes`: the streaming merge never imports torch).
Everything is written into a temporary folder that is renamed into place when complete.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pmalopti.pma.safetensors_format import (
    DType,
    TensorSpec,
    dtype_of,
    header_bytes,
    tensor_bytes,
)
from pmalopti.runtime.fs import atomic_dir, atomic_write_json
from pmalopti.runtime.inputs import check_inside

INDEX_NAME = "model.safetensors.index.json"
METADATA_NAME = "pmalopti_merge.json"
# Files copied from the source checkpoint: the model's config, generation config, tokenizer and
# remote code. Weights, optimizer state and trainer state are not part of a merged model.
COPY_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template.*",
    "*.jinja",
    "preprocessor_config.json",
    "*.py",
)

if TYPE_CHECKING:
    import torch


def spec_of(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(t.shape), dtype_of(t.dtype))


def plan_shards(specs: Iterable[TensorSpec], shard_size: int) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most `shard_size` bytes.

    As in `save_pretrained`, a tensor larger than `shard_size` gets a shard of its own.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


FLUSH_EVERY = 64 << 20
"""bytes written between background `fdatasync`s of a shard: the disk writes overlap the work
that produces the data, and the final fsync of the folder (`runtime.fs.atomic_dir`) finds little
left to wait for (the kernel alone would start writing back only after ~30 s)"""


class ShardWriter:
    """Writes one safetensors file whose layout is fixed up front; tensors arrive in order.

    `write` takes a whole tensor; `write_part` takes consecutive pieces of the flattened tensor;
    `write_bytes` takes such a piece as raw bytes.
    """

    def __init__(self, path: Path, specs: list[TensorSpec]):
        self.path = Path(path)
        self.specs = specs
        self._next = 0
        self._done_bytes = 0  # of the current tensor
        self._f = open(self.path, "wb")  # noqa: SIM115 -- closed in close()
        self._f.write(header_bytes(specs))
        self._unflushed = 0
        self._flusher: threading.Thread | None = None
        self._flush_error: OSError | None = None

    @property
    def complete(self) -> bool:
        return self._next == len(self.specs)

    def _current(self, name: str, dtype: DType) -> TensorSpec:
        if self.complete:
            raise ValueError(f"{self.path.name}: unexpected extra tensor {name!r}")
        spec = self.specs[self._next]
        if spec.name != name or spec.dtype != dtype:
            raise ValueError(
                f"{self.path.name}: got tensor {name!r} ({dtype}), expected {spec.name!r} "
                f"({spec.dtype})"
            )
        return spec

    def write(self, name: str, t: torch.Tensor) -> None:
        spec = self._current(name, dtype_of(t.dtype))
        if tuple(t.shape) != spec.shape or self._done_bytes:
            raise ValueError(
                f"{self.path.name}: tensor {name!r} has shape {list(t.shape)}, expected "
                f"{list(spec.shape)}"
            )
        self.write_part(name, t)

    def write_part(self, name: str, part: torch.Tensor) -> None:
        self.write_bytes(name, dtype_of(part.dtype), tensor_bytes(part))

    def write_bytes(self, name: str, dtype: DType, data: memoryview) -> None:
        """The next piece of tensor `name` as raw little-endian bytes of `dtype`."""
        spec = self._current(name, dtype)
        data = memoryview(data).cast("B")
        if self._done_bytes + len(data) > spec.nbytes:
            raise ValueError(f"{self.path.name}: more data than tensor {name!r} holds")
        self._f.write(data)
        self._done_bytes += len(data)
        if self._done_bytes == spec.nbytes:
            self._next += 1
            self._done_bytes = 0
        self._unflushed += len(data)
        if self._unflushed >= FLUSH_EVERY and not (self._flusher and self._flusher.is_alive()):
            self._f.flush()
            self._unflushed = 0
            self._flusher = threading.Thread(
                target=self._fdatasync, name="pmalopti-fdatasync", daemon=True
            )
            self._flusher.start()

    def _fdatasync(self) -> None:
        try:
            os.fdatasync(self._f.fileno())
        except OSError as exc:  # reported by close(): a later fsync may no longer see it
            self._flush_error = exc

    def close(self) -> None:
        missing = [s.name for s in self.specs[self._next :]]
        if self._flusher is not None:
            self._flusher.join()
        self._f.close()
        if self._flush_error is not None:
            raise self._flush_error
        if missing:
            raise ValueError(f"{self.path.name}: tensors never written: {missing[:5]}")


class ShardedWriter:
    """Writes tensors (whole or in pieces) into planned shards and the index, in plan order."""

    def __init__(self, out_dir: Path, specs: Iterable[TensorSpec], shard_size: int):
        self.out_dir = Path(out_dir)
        self.shards = plan_shards(specs, shard_size)
        self.names = shard_names(len(self.shards))
        self._i = 0
        self._w = ShardWriter(self.out_dir / self.names[0], self.shards[0])

    def _writer(self) -> ShardWriter:
        while self._w.complete and self._i + 1 < len(self.shards):
            self._w.close()
            self._i += 1
            self._w = ShardWriter(self.out_dir / self.names[self._i], self.shards[self._i])
        return self._w

    def write(self, name: str, t: torch.Tensor) -> None:
        self._writer().write(name, t)

    def write_part(self, name: str, part: torch.Tensor) -> None:
        self._writer().write_part(name, part)

    def write_bytes(self, name: str, dtype: DType, data: memoryview) -> None:
        self._writer().write_bytes(name, dtype, data)

    def close(self) -> None:
        """Finish the last shard and write the index; raises if anything was left unwritten."""
        self._writer().close()
        if self._i + 1 < len(self.shards):
            raise ValueError(f"shards {self.names[self._i + 1 :]} were never written")
        write_index(self.out_dir, self.shards, self.names)


def write_index(out_dir: Path, shards: list[list[TensorSpec]], names: list[str]) -> None:
    """`model.safetensors.index.json`, written (as by `save_pretrained`) only when sharded."""
    if len(shards) == 1:
        return
    weight_map = {s.name: fname for shard, fname in zip(shards, names, strict=True) for s in shard}
    total = sum(s.nbytes for shard in shards for s in shard)
    atomic_write_json(
        Path(out_dir) / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map}
    )


def copy_model_files(source_dir: Path, out_dir: Path, *, dtype: Any = None) -> None:
    """Copy config / generation config / tokenizer files; record `dtype` in config.json if given."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    for f in sorted(source_dir.iterdir()):
        if any(fnmatch.fnmatch(f.name, p) for p in COPY_PATTERNS) and f.is_file():
            check_inside(source_dir, f, what="model file")  # a symlink out is refused, not copied
            shutil.copyfile(f, out_dir / f.name)
    cfg_file = out_dir / "config.json"
    if dtype is not None and cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        name = str(dtype).removeprefix("torch.")
        keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
        for k in keys:
            cfg[k] = name
        atomic_write_json(cfg_file, cfg)


def write_metadata(out_dir: Path, metadata: Mapping[str, Any]) -> None:
    atomic_write_json(Path(out_dir) / METADATA_NAME, dict(metadata))


def _buffered_shards(
    tensors: Iterable[tuple[str, torch.Tensor]], shard_size: int
) -> Iterable[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into shards without knowing the total in advance."""
    import torch

    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    group: list[tuple[str, torch.Tensor]] = []
    size = 0
    seen: set[str] = set()
    for name, t in tensors:
        if name in seen:
            raise ValueError(f"tensor {name!r} given twice")
        seen.add(name)
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        nbytes = t.numel() * t.element_size()
        if group and size + nbytes > shard_size:
            yield group
            group, size = [], 0
        group.append((name, t))
        size += nbytes
    yield group


def write_hf_checkpoint(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    out_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    config: Any = None,
    shard_size: int = 5_000_000_000,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write `tensors` as a Hugging Face model folder at `out_dir`, atomically; return its path.

    `tensors`: a dict or an iterable of (name, tensor) pairs (at most one shard of an iterable is
    held at a time). Tied duplicates are written as given. `source_dir`: a HF folder whose
    config, generation config and tokenizer files are copied; else `config` (a transformers
    config) is saved. `metadata` goes to `pmalopti_merge.json`. An existing `out_dir` is
    refused unless `force`.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    out = Path(out_dir)
    with atomic_dir(out, force=force) as tmp:
        shards: list[list[TensorSpec]] = []
        for i, group in enumerate(_buffered_shards(items, shard_size)):
            specs = [spec_of(n, t) for n, t in group]
            w = ShardWriter(tmp / f".shard-{i}", specs)
            try:
                for n, t in group:
                    w.write(n, t)
            finally:
                w.close()
            shards.append(specs)
        names = shard_names(len(shards))
        for i, name in enumerate(names):
            os.replace(tmp / f".shard-{i}", tmp / name)
        write_index(tmp, shards, names)
        if source_dir is not None:
            copy_model_files(Path(source_dir), tmp)
        elif config is not None:
            config.save_pretrained(tmp)
        if metadata is not None:
            write_metadata(tmp, metadata)
    return out.resolve()
