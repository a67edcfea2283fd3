"""Inputs never reach outside themselves: files read from an input folder must live inside it.

A model folder may name its shards in an index, hold tokenizer files or be full of symlinks;
none of these may lead a read (or a copy into an output) to a file elsewhere on the machine.
`file_inside(folder, name)` refuses an absolute or `..` name, and a file whose real path (symlinks
followed) leaves the folder. One exception is the layout of the Hugging Face hub cache, where
`models--org--name/snapshots/<rev>/<file>` are symlinks to `models--org--name/blobs/<hash>`:
a target in the `blobs` folder of the same cached repository is accepted.
"""

from __future__ import annotations

from pathlib import Path, PurePath


def _hub_blobs(folder: Path) -> Path | None:
    """`models--x/blobs` when `folder` is (inside) `models--x/snapshots/<rev>` of the hub cache."""
    parts = folder.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith(("models--", "datasets--")):
            return Path(*parts[:i]) / "blobs"
    return None


def is_inside(folder: str | Path, path: str | Path) -> bool:
    """Whether `path`'s real location is inside `folder` (or the hub cache blobs it links to)."""
    root = Path(folder).absolute()
    real_root = root.resolve()
    real = Path(path).resolve()
    if real == real_root or real_root in real.parents:
        return True
    blobs = _hub_blobs(root) or _hub_blobs(real_root)
    return blobs is not None and blobs.resolve() in real.parents


def file_inside(folder: str | Path, name: str, *, what: str = "file") -> Path:
    """`folder / name`, refused (ValueError) when `name` is absolute, climbs with `..`, or the
    file's real path leaves `folder`. Existence is not checked."""
    pure = PurePath(str(name))
    if not str(name) or pure.is_absolute() or ".." in pure.parts or "\\" in str(name):
        raise ValueError(f"{folder}: {what} {str(name)!r} is not a plain name inside the folder")
    path = Path(folder) / pure
    if path.exists() or path.is_symlink():
        check_inside(folder, path, what=what)
    return path


def check_inside(folder: str | Path, path: str | Path, *, what: str = "file") -> None:
    """Refuse (ValueError) a file of `folder` that is a symlink to somewhere outside it."""
    if not is_inside(folder, path):
        raise ValueError(
            f"{path}: {what} is a symlink that leaves {folder}; refusing to read outside the input"
        )


def check_folder(folder: str | Path, *, what: str = "model folder") -> None:
    """Refuse a folder any of whose files (top level) is a symlink leaving it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.is_symlink():
            check_inside(folder, f, what=f"{what} file")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, shortened: for wrapping a library's error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def index_files(folder: str | Path, index_name: str) -> dict[str, Path]:
    """tensor name -> shard file, from a Hugging Face index (`model.safetensors.index.json`);
    every shard it names must be a file inside `folder`."""
    from pmalopti.runtime.fs import read_json

    folder = Path(folder)
    where = folder / index_name
    index = read_json(file_inside(folder, index_name, what="index"))
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise ValueError(f"{where}: no 'weight_map' in the index")
    out = {}
    shards: dict[str, Path] = {}  # each shard is checked once, not once per tensor
    for name, fname in wmap.items():
        if not isinstance(fname, str):
            raise ValueError(
                f"{where}: weight_map[{name!r}] is a {type(fname).__name__}, not a file name"
            )
        f = shards.get(fname)
        if f is None:
            try:
                f = file_inside(folder, fname, what="shard")
            except ValueError as exc:
                raise ValueError(f"{where}: weight_map[{name!r}]: {exc}") from None
            if not f.is_file():
                raise FileNotFoundError(f"{where}: shard {fname} (for {name!r}) is missing")
            shards[fname] = f
        out[name] = f
    return out
