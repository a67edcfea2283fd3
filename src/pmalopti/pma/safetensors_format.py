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

# Real headers are ~100 bytes per tensor (tens of KB for a 7B model). The safetensors library caps
# them at 100 MB; we also cap them relative to the data they describe, so that a small file cannot
# make us parse (and hold) a huge header of empty tensors.
_MAX_HEADER = 100_000_000
_HEADER_SLACK = 1 << 20  # bytes of header allowed beyond the size of the data section
_MAX_NDIM = 32
_MAX_DIM = 1 << 48
_MAX_NAME = 1024


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
            # The length is the file's first 8 bytes: never print it (it may be any file's text).
            if n > size - 8:
                raise SafetensorsError(
                    f"{path}: not a safetensors file, or a truncated one (its header length "
                    f"field is larger than the {size}-byte file)"
                )
            if n > min(_MAX_HEADER, _HEADER_SLACK + (size - 8 - n)):
                raise SafetensorsError(
                    f"{path}: refusing a {n}-byte safetensors header for {size - 8 - n} bytes of "
                    "tensor data (a header is ~100 bytes per tensor)"
                )
            raw = f.read(n)
    except OSError as exc:
        raise SafetensorsError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw)
    except UnicodeDecodeError:
        raise SafetensorsError(f"{path}: corrupt safetensors header (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise SafetensorsError(
            f"{path}: corrupt safetensors header (not JSON: {exc.msg} at byte {exc.pos})"
        ) from None
    except RecursionError:
        raise SafetensorsError(f"{path}: corrupt safetensors header (nested too deep)") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise SafetensorsError(
            f"{path}: corrupt safetensors header (__metadata__ is not an object)"
        )
    data_start = 8 + n
    data_len = size - data_start
    out: dict[str, StoredTensor] = {}
    ranges = []
    for name, info in header.items():
        spec, begin, end = _entry(path, name, info)
        if end - begin != spec.nbytes:
            raise SafetensorsError(
                f"{path}: tensor {name[:_MAX_NAME]!r}: byte range [{begin}, {end}) does not match "
                f"shape {list(spec.shape)} of {DTYPE_NAMES[spec.dtype]}"
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


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(path: Path, name: str, info: object) -> tuple[TensorSpec, int, int]:
    """One header entry checked field by field: (spec, begin, end) or a one-line error."""
    where = f"{path}: tensor {name[:_MAX_NAME]!r}"
    if not name or len(name) > _MAX_NAME:
        raise SafetensorsError(f"{path}: a tensor name is empty or longer than {_MAX_NAME}")
    if not isinstance(info, dict):
        raise SafetensorsError(f"{where}: malformed header entry (not an object)")
    dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        shown = dtype_name if isinstance(dtype_name, str) and len(dtype_name) < 16 else "?"
        raise SafetensorsError(f"{where}: unsupported or missing dtype {shown!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(_is_int(s) and 0 <= s <= _MAX_DIM for s in shape)
    ):
        raise SafetensorsError(
            f"{where}: malformed shape (want a list of at most {_MAX_NDIM} sizes in 0..2^48)"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and 0 <= o < 1 << 62 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise SafetensorsError(
            f"{where}: malformed data_offsets (want [begin, end], 0 <= begin <= end)"
        )
    spec = TensorSpec(name, tuple(shape), DTYPES[dtype_name])
    if spec.nbytes >= 1 << 62:
        raise SafetensorsError(f"{where}: shape {list(shape)} is impossibly large")
    return spec, offsets[0], offsets[1]


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
