"""Lazy, per-tensor access to one checkpoint, through its own index.

A checkpoint is a Hugging Face model folder (`model.safetensors`, shards + index, or
`pytorch_model*.bin`) or a single `.safetensors` file. Headers are read and checked when it is
opened; tensor data is read only when asked for, one tensor at a time, so memory does not
depend on how many checkpoints are open. `.bin` files have no header: they are opened with
`torch.load(weights_only=True, mmap=True)`, one file per checkpoint at a time (slower).
Safetensors are read as raw bytes (`read_bytes`, numpy, no torch); `read`/`read_into` give torch
tensors and import torch on first use.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pmalopti.pma.safetensors_format import (
    SafetensorsError,
    StoredTensor,
    TensorSpec,
    dtype_of,
    pread_into,
    read_header,
)
from pmalopti.runtime.fs import read_json
from pmalopti.runtime.inputs import file_inside, index_files

ST_INDEX = "model.safetensors.index.json"
ST_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

if TYPE_CHECKING:
    import torch

# Map pieces with their pages already in place (one call, not a fault per page) where possible.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A `pytorch_model*.bin` state dict, never unpickling anything but tensors."""
    import torch

    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's message quotes what it found in the file: name the failure, not the content
        why = (
            "it holds objects other than tensors"
            if "weights_only" in str(exc) or "Unsupported global" in str(exc)
            else type(exc).__name__
        )
        raise ValueError(
            f"{path}: cannot load with torch.load(weights_only=True) ({why}; a corrupt file "
            "or not a PyTorch checkpoint)"
        ) from None
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise ValueError(f"{path}: not a state dict of named tensors")
    return sd


class CheckpointReader:
    """One checkpoint's tensors by name: `specs` (shape, dtype) up front, `read(name)` lazily.

    `read` is safe to call from several threads.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise FileNotFoundError(f"checkpoint {p} does not exist")
        self.model_dir: Path | None = p if p.is_dir() else None
        self.config: dict[str, Any] | None = None
        if self.model_dir and (self.model_dir / "config.json").is_file():
            config_file = file_inside(self.model_dir, "config.json", what="config")
            self.config = read_json(config_file)
            if not isinstance(self.config, dict):
                raise ValueError(f"{config_file}: not a JSON object")
        self._stored: dict[str, StoredTensor] = {}
        self._bin_files: dict[str, Path] = {}
        self._bin_cache: tuple[Path, dict[str, torch.Tensor]] | None = None
        self._lock = threading.Lock()
        self._fds: dict[Path, int] = {}
        self.read_ahead = 0
        """bytes to ask the kernel to prefetch past each read (posix_fadvise WILLNEED), per file:
        keeps reads in flight on network filesystems; 0 leaves readahead to the kernel"""
        self._advised: dict[Path, int] = {}  # file -> end of the range already advised
        self.specs: dict[str, TensorSpec] = {}
        self.format = "safetensors"
        if p.is_file():
            if p.suffix == ".safetensors":
                self._open_safetensors({None: p})
            elif p.suffix in (".bin", ".pt", ".pth"):
                self._open_bin([p])
            else:
                raise ValueError(f"checkpoint {p}: expected a model folder or a .safetensors file")
        elif (p / ST_INDEX).is_file():
            self._open_safetensors(index_files(p, ST_INDEX))
        elif (p / ST_SINGLE).is_file():
            self._open_safetensors({None: file_inside(p, ST_SINGLE, what="weights")})
        elif (p / BIN_INDEX).is_file():
            self._open_bin(sorted(set(index_files(p, BIN_INDEX).values())))
        elif (p / BIN_SINGLE).is_file():
            self._open_bin([file_inside(p, BIN_SINGLE, what="weights")])
        else:
            raise FileNotFoundError(
                f"checkpoint {p}: no {ST_SINGLE}, {ST_INDEX}, {BIN_SINGLE} or {BIN_INDEX} in it"
            )

    def _open_safetensors(self, files: dict[str | None, Path]) -> None:
        expected = {n: f for n, f in files.items() if n is not None}
        headers: dict[Path, dict[str, StoredTensor]] = {}
        for f in sorted(set(files.values())):
            try:
                headers[f], _ = read_header(f)
            except SafetensorsError as exc:
                raise ValueError(f"checkpoint {self.path}: {exc}") from exc
        for f, stored in headers.items():
            for name, st in stored.items():
                if name in self._stored:
                    raise ValueError(
                        f"checkpoint {self.path}: tensor {name!r} is stored twice "
                        f"({self._stored[name].file.name} and {f.name})"
                    )
                self._stored[name] = st
        for name, f in expected.items():
            st = self._stored.get(name)
            if st is None or st.file != f:
                raise ValueError(
                    f"checkpoint {self.path}: the index puts tensor {name!r} in {f.name}, "
                    "but that file does not hold it"
                )
        # File order, so that a merge reads each shard front to back.
        order = sorted(self._stored.values(), key=lambda s: (str(s.file), s.offset))
        self.specs = {s.spec.name: s.spec for s in order}

    def _open_bin(self, files: list[Path]) -> None:
        self.format = "bin"
        for f in files:
            sd = _load_bin(f)
            for name, t in sd.items():
                if name in self.specs:
                    raise ValueError(f"checkpoint {self.path}: tensor {name!r} is stored twice")
                self.specs[name] = TensorSpec(name, tuple(t.shape), dtype_of(t.dtype))
                self._bin_files[name] = f
            del sd

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())

    def read(self, name: str) -> torch.Tensor:
        """One whole tensor, in fresh memory (a torch tensor)."""
        import torch

        spec = self._spec(name)
        buf = torch.empty(spec.nbytes, dtype=torch.uint8)  # (bytes,)
        return self.read_into(name, 0, math.prod(spec.shape), buf).reshape(spec.shape)

    def read_into(self, name: str, start: int, count: int, buf: torch.Tensor) -> torch.Tensor:
        """Elements [start, start + count) of the flattened tensor, read into the uint8 torch
        tensor `buf`; a 1-D view of `buf` in the tensor's dtype."""
        dtype = self._spec(name).dtype.torch
        out = buf[: count * dtype.itemsize]
        self.read_bytes(name, start, count, out.numpy())
        return out.view(dtype)

    def read_bytes(self, name: str, start: int, count: int, buf: np.ndarray) -> np.ndarray:
        """The bytes of elements [start, start + count) of the flattened tensor, read into the
        uint8 array `buf`; returns the filled front of `buf`.

        Reading a tensor in pieces into reused buffers keeps memory flat whatever the tensor
        and checkpoint sizes; safetensors are read with `pread` (nothing stays mapped).
        """
        spec = self._spec(name)
        size = spec.dtype.itemsize
        out = buf[: count * size]
        if self.format == "bin":
            import torch

            with self._lock:
                src = self._bin_tensor(name).reshape(-1)[start : start + count]
                torch.from_numpy(out).view(src.dtype).copy_(src)
            return out
        st = self._stored[name]
        fd = self._fd(st.file)
        what = f"checkpoint {self.path}: {st.file.name}: tensor {name!r}"
        if self.read_ahead:
            self._advise(st.file, fd, st.offset + start * size, len(out))
        try:
            pread_into(fd, st.offset + start * size, memoryview(out), what)
        except SafetensorsError as exc:
            raise ValueError(str(exc)) from exc
        return out

    def map_bytes(self, name: str, start: int, count: int, buf: np.ndarray) -> np.ndarray:
        """Like `read_bytes`, but a safetensors piece is a read-only view of the file mapped in
        memory (no copy); the mapping lasts as long as the returned array (or a view of it).

        A file that shrinks below the piece is an error, not a crash (checked before mapping).
        """
        if self.format == "bin":
            return self.read_bytes(name, start, count, buf)
        spec = self._spec(name)
        st = self._stored[name]
        fd = self._fd(st.file)
        begin = st.offset + start * spec.dtype.itemsize
        length = count * spec.dtype.itemsize
        if length == 0:
            return buf[:0]
        if self.read_ahead:
            self._advise(st.file, fd, begin, length)
        if os.fstat(fd).st_size < begin + length:
            raise ValueError(
                f"checkpoint {self.path}: {st.file.name}: tensor {name!r}: file ended early "
                "(truncated while reading)"
            )
        skip = begin % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(fd, skip + length, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=begin - skip)
        return np.frombuffer(m, dtype=np.uint8, count=length, offset=skip)

    def _fd(self, file: Path) -> int:
        with self._lock:
            fd = self._fds.get(file)
            if fd is None:
                fd = self._fds[file] = os.open(file, os.O_RDONLY)
        return fd

    def _advise(self, file: Path, fd: int, offset: int, length: int) -> None:
        """Prefetch up to `read_ahead` bytes past this read, once per range (a hint only)."""
        end = offset + length + self.read_ahead
        with self._lock:
            done = self._advised.get(file, 0)
            if done >= offset and end - done < self.read_ahead // 2:
                return  # most of the window is already in flight
            begin = max(done, offset)
            self._advised[file] = end
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, begin, end - begin, os.POSIX_FADV_WILLNEED)

    def _spec(self, name: str) -> TensorSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"checkpoint {self.path} has no tensor {name!r}") from None

    def _bin_tensor(self, name: str) -> torch.Tensor:
        f = self._bin_files[name]
        if self._bin_cache is None or self._bin_cache[0] != f:
            self._bin_cache = None  # drop the previous file before loading the next
            self._bin_cache = (f, _load_bin(f))
        return self._bin_cache[1][name]

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._bin_cache = None

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointReader({str(self.path)!r}, {len(self.specs)} tensors)"
