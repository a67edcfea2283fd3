"""Atomic output: write into a temporary sibling, rename into place when complete.

A crash, Ctrl-C or a full disk leaves at most a hidden `.tmp-*` folder, never a folder that
looks finished. Inputs are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def check_output_dir(out: Path, *, force: bool, inputs: list[Path] = ()) -> None:  # type: ignore[assignment]
    """Refuse an existing output (unless `force`) and an output inside or equal to an input."""
    out = Path(out).resolve()
    for src in inputs:
        src = Path(src).resolve()
        src_dir = src if src.is_dir() else src.parent
        if out in (src, src_dir) or src in out.parents or (src.is_dir() and out in src.parents):
            raise ValueError(f"output {out} is inside (or is) input {src}; choose another folder")
    if out.exists() and not force:
        raise FileExistsError(f"output {out} already exists (use --force to replace it)")


@contextlib.contextmanager
def atomic_dir(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success rename it to `out`.

    On any exception the temporary folder is removed and `out` is left as it was.
    """
    out = Path(out).resolve()
    if out.exists() and not force:
        raise FileExistsError(f"output {out} already exists (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
