"""The safetensors file format, read and written with plain file I/O.

A safetensors file is an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the bytes.
We parse it ourselves (instead of `safe_open`) for three reasons: a memory-mapped file counts
towards the process's resident memory once touched, so N whole files mapped make peak RSS grow
with N (we map one piece at a time, or `pread` it); a truncated or corrupt file gets an error
naming the file and the tensor, before any output; and the merge of safetensors needs no torch
(dtypes are `DType`s here, torch's only on demand).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DType:
    """An element type by its safetensors code, known without importing torch.

    `itemsize` and `is_floating_point` read as on a `torch.dtype`; `str()` is torch's name.
    """

    code: str
    """the safetensors header's name, e.g. BF16"""
    name: str
    """torch's name, e.g. bfloat16"""
    itemsize: int
    is_floating_point: bool

    @property
    def torch(self) -> Any:
        """The `torch.dtype` (imports torch)."""
        import torch

        return getattr(torch, self.name)

    def __str__(self) -> str:
        return self.name


DTYPES: dict[str, DType] = {
    code: DType(code, name, size, code.startswith(("F", "BF")))
    for code, name, size in (
        ("F64", "float64", 8),
        ("F32", "float32", 4),
        ("F16", "float16", 2),
        ("BF16", "bfloat16", 2),
        ("I64", "int64", 8),
        ("I32", "int32", 4),
        ("I16", "int16", 2),
        ("I8", "int8", 1),
        ("U8", "uint8", 1),
        ("BOOL", "bool", 1),
        ("U16", "uint16", 2),
        ("U32", "uint32", 4),
        ("U64", "uint64", 8),
        ("F8_E4M3", "float8_e4m3fn", 1),
        ("F8_E5M2", "float8_e5m2", 1),
    )
}
_BY_NAME = {d.name: d for d in DTYPES.values()}
# Floating dtypes that are averaged (in float32); FP8 is floating but needs its scales.
MERGEABLE = frozenset(DTYPES[c] for c in ("F16", "BF16", "F32", "F64"))
# `--dtype` spellings of the output dtype of floating tensors.
OUT_DTYPES = {
    **dict.fromkeys(("bf16", "bfloat16"), DTYPES["BF16"]),
    **dict.fromkeys(("fp16", "float16", "half"), DTYPES["F16"]),
    **dict.fromkeys(("fp32", "float32", "float"), DTYPES["F32"]),
}


def dtype_of(dtype: Any) -> DType:
    """The `DType` of a `DType`, a `torch.dtype` or a torch dtype name (`bfloat16`)."""
    if isinstance(dtype, DType):
        return dtype
    name = str(dtype).removeprefix("torch.")
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"dtype {name} cannot be stored in safetensors") from None


def parse_dtype(dtype: Any) -> DType | None:
    """`--dtype` (bf16 | fp16 | fp32, or a dtype) as a `DType`; None stays None."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        try:
            return OUT_DTYPES[dtype.lower()]
        except KeyError:
            raise ValueError(
                f"dtype {dtype!r} is not supported; choose bf16, fp16 or fp32"
            ) from None
    return dtype_of(dtype)


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
    dtype: DType

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
                f"shape {list(spec.shape)} of {spec.dtype.code}"
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
            "dtype": s.dtype.code,
            "shape": list(s.shape),
            "data_offsets": [pos, pos + s.nbytes],
        }
        pos += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: Any) -> memoryview:
    """The raw little-endian bytes of a (torch) tensor, without a copy when it is contiguous."""
    import torch

    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())
