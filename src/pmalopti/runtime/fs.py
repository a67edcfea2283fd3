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
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(root: Path) -> None:
    """Give files under `root` the mode a plain `open()` would (0666 & ~umask; folders 0777 &
    ~umask). transformers writes `model.safetensors` 0600 through a temporary file."""
    mask = current_umask()
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk (before an atomic rename makes it final)."""
    root = Path(root)
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it is durable only after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
