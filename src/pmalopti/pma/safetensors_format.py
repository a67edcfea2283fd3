"""The safetensors file format, read and written with plain file I/O.

A safetensors file is an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the bytes.
We parse it ourselves (instead of `safe_open`) for two reasons: a memory-mapped file counts
towards the process's resident memory once touched, so N open mmaps make peak RSS grow with N;
and a truncated or corrupt file gets an error naming the file and the tensor, before any output.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

# Real headers are a few MB at most; a larger length means the file is not safetensors.
_MAX_HEADER = 256 << 20


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor: all a writer needs to lay out a file."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives: file, absolute byte offset of its data, and its spec."""

    spec: TensorSpec
    file: Path
    offset: int


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as such (truncated, corrupt, unknown dtype)."""


def read_header(path: Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Parse and check a safetensors header; return {name: StoredTensor} and `__metadata__`.

    Checks that every tensor's byte range matches its shape and dtype, lies inside the file,
    and that the ranges tile the data section (a shorter file is reported as truncated).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise SafetensorsError(
                    f"{path}: corrupt or truncated safetensors header (claims {n} bytes, "
                    f"file has {size})"
                )
            raw = f.read(n)
    except OSError as exc:
        raise SafetensorsError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    out: dict[str, StoredTensor] = {}
    ranges = []
    for name, info in header.items():
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape = tuple(int(s) for s in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(f"{path}: tensor {name!r}: malformed header entry") from exc
        if dtype_name not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r}: unsupported dtype {dtype_name}")
        spec = TensorSpec(name, shape, DTYPES[dtype_name])
        if any(s < 0 for s in shape) or end - begin != spec.nbytes or begin < 0:
            raise SafetensorsError(
                f"{path}: tensor {name!r}: byte range [{begin}, {end}) does not match "
                f"shape {list(shape)} of {dtype_name}"
            )
        if end > data_len:
            raise SafetensorsError(
                f"{path}: truncated: tensor {name!r} ends at byte {data_start + end} but the "
                f"file has {size} bytes"
            )
        ranges.append((begin, end))
        out[name] = StoredTensor(spec, path, data_start + begin)
    ranges.sort()
    pos = 0
    for begin, end in ranges:
        if begin != pos:
            raise SafetensorsError(f"{path}: corrupt: tensor data has a gap or overlap at {begin}")
        pos = end
    if pos != data_len:
        raise SafetensorsError(
            f"{path}: corrupt: {data_len - pos} bytes after the last tensor's data"
        )
    return out, {str(k): str(v) for k, v in meta.items()}


def pread_into(fd: int, offset: int, view: memoryview, what: str) -> None:
    """Fill `view` from byte `offset` of the open file `fd` (plain reads: nothing stays mapped)."""
    got = 0
    while got < len(view):
        k = os.preadv(fd, [view[got:]], offset + got)
        if k == 0:
            raise SafetensorsError(f"{what}: file ended early (truncated while reading)")
        got += k


def header_bytes(specs: list[TensorSpec], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and JSON header for `specs` laid out back to back in this order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    pos = 0
    for s in specs:
        header[s.name] = {
            "dtype": DTYPE_NAMES[s.dtype],
            "shape": list(s.shape),
            "data_offsets": [pos, pos + s.nbytes],
        }
        pos += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())
