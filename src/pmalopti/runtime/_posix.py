"""POSIX file primitives under `runtime.fs`: umask, fsync, no-replace rename, temporary names.

Temporary files and folders are named `.tmp-<name>-<host>-<pid>-<random>` (and `.old-...` for an
output moved aside), so a later run on the same host can tell those of a killed process from
those of a live one and remove only the former (`remove_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_STALE = re.compile(r"^\.(?:tmp|old)-.*-([0-9a-f]{6})-(\d+)-[0-9a-f]{8}(?:\.tmp)?$")


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """Give `path` (a file, or a folder and everything under it) the modes a plain `mkdir` /
    `open` would: 0o777 / 0o666 minus the umask. Symlinks are left alone.

    Call it on a folder written by a library that picks its own modes, e.g. transformers'
    `save_pretrained`, which leaves `model.safetensors` at 0600.
    """
    mask = current_umask()
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it is durable only after this)."""
    _fsync_path(path, directory=True)


def _fsync_path(path: str | Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open folders; the data files were synced
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and folder under `path` (and `path` itself)."""
    for root, dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                _fsync_path(p)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        fsync_dir(root)


def _libc_renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _libc_renameat2()
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_noreplace(src: str | Path, dst: str | Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError if `dst` exists (even an empty folder).

    Atomic on Linux (renameat2 RENAME_NOREPLACE); elsewhere a check then a rename.
    """
    if _RENAMEAT2 is not None:
        rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new, empty folder `parent/<temp_name(prefix)>` whose mode follows the umask (mkdtemp's
    is always 0700)."""
    parent = Path(parent)
    for _ in range(100):
        path = parent / temp_name(prefix)
        try:
            os.mkdir(path)  # mode 0o777 minus the umask
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a temporary folder in {parent}")


def temp_name(prefix: str) -> str:
    """`<prefix><host>-<pid>-<random>`: unique, and tells which process on which host made it."""
    return f"{prefix}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(parent: str | Path) -> list[Path]:
    """Remove `.tmp-*` / `.old-*` leftovers in `parent` made on this host by processes that no
    longer run (a run killed mid-write); return what was removed. Others' are never touched."""
    removed = []
    with contextlib.suppress(OSError):
        for p in Path(parent).iterdir():
            m = _STALE.match(p.name)
            if m and m.group(1) == _HOST and not _alive(int(m.group(2))):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed
