"""Output folders: atomic writes, the `--force` rule, fsync, and modes that follow the umask.

Every folder pmalopti creates (a merge, a checkpoint, a run, a demo) holds a marker file,
`MARKER`. `--force` means one thing everywhere: it replaces a folder only if that marker says
pmalopti wrote it, and never `.`, an ancestor of the working folder, the home folder, or a
folder that is (or holds, or sits inside) an input. Everything else is refused with one line.

`atomic_dir` writes into a temporary sibling and renames it into place when complete, so a
crash, Ctrl-C or a full disk leaves at most a hidden `.tmp-*` folder, never a folder that looks
finished. The final rename refuses an output that appeared (or was replaced) meanwhile: of two
concurrent writers one wins and the other fails clearly, and nothing is deleted that the writer
did not create. Files and folders are fsync'd before the rename; modes follow the umask as a
plain `mkdir`/`open` would (0755 / 0644 under umask 022), including files written by libraries
that choose 0600 (transformers' `save_pretrained`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pmalopti.errors import OutputError, UserError
from pmalopti.runtime._posix import (
    current_umask,
    follow_umask,
    fsync_dir,
    fsync_tree,
    make_temp_dir,
    remove_stale,
    rename_noreplace,
    temp_name,
)

__all__ = [
    "MARKER",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "current_umask",
    "follow_umask",
    "fsync_dir",
    "fsync_tree",
    "is_ours",
    "prepare_run_dir",
    "read_json",
    "remove_stale",
    "removed_on_error",
    "rename_noreplace",
    "save_figure",
    "write_marker",
]

MARKER = ".pmalopti.json"
"""Name of the file that marks a folder as written by pmalopti (what `--force` may replace)."""


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark `folder` as written by pmalopti (`kind`: merge, checkpoint, run, demo, ...)."""
    from pmalopti import __version__

    atomic_write_json(
        Path(folder) / MARKER, {"written_by": "pmalopti", "version": __version__, "kind": kind}
    )


def is_ours(folder: str | Path) -> bool:
    """True if `folder` holds pmalopti's marker (a regular file naming pmalopti)."""
    f = Path(folder) / MARKER
    try:
        if f.is_symlink() or not f.is_file() or f.stat().st_size > 4096:
            return False
        return json.loads(f.read_text(encoding="utf-8")).get("written_by") == "pmalopti"
    except (OSError, ValueError, AttributeError):
        return False


def _protected(out: Path) -> str | None:
    """Why `out` (resolved) may never be an output, or None."""
    cwd = Path.cwd().resolve()
    if out == cwd:
        return "is the working folder"
    if out in cwd.parents:
        return "is a parent of the working folder"
    with contextlib.suppress(RuntimeError, KeyError):
        if out == Path.home().resolve():
            return "is the home folder"
    return None


def _input_clash(out: Path, inputs: Iterable[str | Path]) -> str | None:
    for src in inputs:
        if src is None or str(src) == "":
            continue
        src = Path(src).resolve()
        if out == src or src in out.parents:
            return f"is (or is inside) input {src}"
        if out in src.parents:
            return f"holds input {src}"
    return None


def check_output_dir(
    out: str | Path, *, force: bool, inputs: Iterable[str | Path] = (), flag: str = "output"
) -> Path:
    """Check that `out` may be written as a new folder; return it resolved.

    Refused, whatever `force`: `.`, a parent of the working folder, the home folder, an input, a
    folder holding an input or inside one, an existing file. An existing non-empty folder is
    refused unless `force`, and with `force` unless pmalopti's marker is in it.
    """
    path = Path(out)
    resolved = path.resolve()
    why = _protected(resolved) or _input_clash(resolved, inputs)
    if why:
        raise OutputError(f"{flag} {path} {why}; choose another folder")
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_dir():
            raise OutputError(f"{flag} {path} exists and is not a folder; choose another path")
        if any(path.iterdir()):
            if not force:
                raise OutputError(f"{flag} {path} already exists (use --force to replace it)")
            if not is_ours(path):
                raise OutputError(
                    f"{flag} {path} was not written by pmalopti (no {MARKER} in it); "
                    "--force only replaces pmalopti's own outputs: remove it yourself or "
                    "choose another folder"
                )
    return resolved


def check_output_file(
    out: str | Path, *, force: bool, inputs: Iterable[str | Path] = (), flag: str = "output"
) -> Path:
    """Check that the file `out` may be written: not a folder, not an input; an existing file
    only with `force`."""
    path = Path(out)
    resolved = path.resolve()
    for src in inputs:
        if src is not None and Path(src).resolve() == resolved:
            raise OutputError(f"{flag} {path} is an input; choose another file")
        if src is not None and Path(src).is_dir() and Path(src).resolve() in resolved.parents:
            raise OutputError(f"{flag} {path} is inside the input {src}; choose another file")
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not force:
        raise OutputError(f"{flag} {path} already exists (use --force to replace it)")
    return resolved


@contextlib.contextmanager
def removed_on_error(run_dir: str | Path, fresh: bool) -> Iterator[None]:
    """Remove `run_dir` if the block fails and the folder is `fresh` (made empty for this run by
    `prepare_run_dir`): a run whose data or model cannot be loaded leaves nothing behind."""
    try:
        yield
    except BaseException:
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


@contextlib.contextmanager
def atomic_dir(
    out: str | Path,
    *,
    force: bool = False,
    inputs: Iterable[str | Path] = (),
    kind: str = "output",
    flag: str = "output",
) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; when the block ends without an error, fsync it,
    set modes from the umask, and rename it to `out`.

    `out` is checked first (`check_output_dir`). At the end the rename refuses an `out` that
    appeared or was replaced meanwhile (another writer); with `force`, the `out` seen at the start
    is moved aside, the new one renamed in, and the old one deleted. On any exception the
    temporary folder is removed and `out` is left as it was. The marker (`kind`) is written first.
    """
    inputs = list(inputs)
    out = check_output_dir(out, force=force, inputs=inputs, flag=flag)
    seen = _identity(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent)
    tmp = make_temp_dir(out.parent, f".tmp-{out.name}-")
    try:
        write_marker(tmp, kind)
        yield tmp
        follow_umask(tmp)
        fsync_tree(tmp)
        _commit(tmp, out, seen, force=force, inputs=inputs, flag=flag)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, out: Path, seen, *, force: bool, inputs: list, flag: str) -> None:
    now = _identity(out)
    if now is not None and now != seen:
        raise OutputError(
            f"{flag} {out} appeared while this command was writing it (another writer?); "
            "nothing was replaced"
        )
    if now is None:
        _rename_into_place(tmp, out, flag)
        return
    check_output_dir(out, force=force, inputs=inputs, flag=flag)  # it may have changed
    if not any(out.iterdir()):
        with contextlib.suppress(OSError):
            os.rmdir(out)  # an empty folder: nothing to keep (fails if it just got content)
        _rename_into_place(tmp, out, flag)
        return
    aside = make_temp_dir(out.parent, f".old-{out.name}-")
    os.rename(out, aside / out.name)
    try:
        _rename_into_place(tmp, out, flag)
    except BaseException:
        with contextlib.suppress(OSError):
            rename_noreplace(aside / out.name, out)
            os.rmdir(aside)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _rename_into_place(tmp: Path, out: Path, flag: str) -> None:
    try:
        rename_noreplace(tmp, out)
    except FileExistsError:
        raise OutputError(
            f"{flag} {out} appeared while this command was writing it (another writer?); "
            "nothing was replaced"
        ) from None


def prepare_run_dir(
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    inputs: Iterable[str | Path] = (),
    kind: str = "run",
    flag: str = "output",
) -> Path:
    """Make the folder of a run (training, demo) ready and marked; return it resolved.

    `resume`: it must exist; nothing is removed. Otherwise a new or empty folder is used; an
    existing non-empty one is refused unless `force`, and `force` (checked by `check_output_dir`)
    starts from an empty folder: the old run is moved aside and deleted, checkpoints included.
    """
    path = Path(run_dir)
    if resume:
        resolved = path.resolve()
        why = _protected(resolved) or _input_clash(resolved, inputs)
        if why:
            raise OutputError(f"{flag} {path} {why}; choose another folder")
        if not path.is_dir():
            raise OutputError(f"--resume: run folder {path} does not exist")
        remove_stale(resolved)  # half-written checkpoints of a killed run
        return resolved
    try:
        resolved = check_output_dir(path, force=force, inputs=inputs, flag=flag)
    except OutputError as exc:
        if force or "already exists" not in str(exc):
            raise
        raise OutputError(
            f"{flag} {path} already exists; use --resume to continue it or --force to start over"
        ) from None
    if resolved.is_dir() and any(resolved.iterdir()):
        aside = make_temp_dir(resolved.parent, f".old-{resolved.name}-")
        os.rename(resolved, aside / resolved.name)
        shutil.rmtree(aside, ignore_errors=True)
    resolved.mkdir(parents=True, exist_ok=True)
    write_marker(resolved, kind)
    return resolved


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically: a temporary file in the same folder, fsync'd, then renamed.
    The mode follows the umask (0644 under umask 022)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / (temp_name(f".tmp-{path.name}-") + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"could not create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) atomically; see `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "") -> Any:
    """A JSON file's content; a file that is not JSON is a UserError naming it (and where)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{what or path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{what or path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise UserError(f"{what or path}: JSON nested too deeply") from None


def iter_jsonl(
    path: str | Path, what: str = "", *, error: type[Exception] = ValueError, objects: bool = False
) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON Lines file. Text that is not UTF-8, a
    line that is not JSON (or, with `objects`, not a JSON object) raises `error` naming the file
    (or `what`) and the line."""
    name = what or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{name}: not UTF-8 text") from None
    for k, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{name}: line {k}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise error(f"{name}: line {k}: JSON nested too deep") from None
        if objects and not isinstance(value, dict):
            raise error(f"{name}: line {k}: expected a JSON object per line")
        yield k, value


def save_figure(fig, path: str | Path) -> Path:
    """Lay out a matplotlib figure, write it as a PNG atomically (creating its folder), close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
