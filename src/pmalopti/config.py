"""Dataclass configs: the one loader (YAML files, dotted `--set a.b=c` overrides) and bounds.

A config is a (nested) dataclass whose fields carry a docstring each (the string literal right
below the field). `load_config(Cls, paths, overrides)` builds one from the defaults, YAML files
and overrides, checking every key and value on the way; errors name the dotted field and say
what is allowed. Bounds are declared once, on the field: `lr: float = bounded(1e-3, gt=0)`;
the loader checks them before the dataclass is constructed (its `__post_init__` then only checks
relations between fields). Everywhere: floats must be finite, integers must fit in 64 bits.
YAML input is bounded in size (`MAX_YAML_BYTES`) and in alias expansion (`MAX_YAML_NODES`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from pmalopti.errors import UserError
from pmalopti.runtime.fs import atomic_write_text
from pmalopti.runtime.threads import MAX_THREADS

T = TypeVar("T")

MAX_YAML_BYTES = 1 << 20
"""largest YAML config file read (1 MiB)"""
MAX_YAML_NODES = 100_000
"""most values a YAML document may hold once its aliases are expanded (refuses alias bombs)"""
MAX_YAML_DEPTH = 64
"""deepest nesting of a YAML document"""
SEED = {"ge": 0, "lt": 2**32}
"""bounds of a seed field: `seed: int = bounded(0, **SEED)`"""
THREADS = {"ge": 0, "le": MAX_THREADS, "label": "0 (auto) to 4 × the CPU cores"}
"""bounds of a torch threads field: `threads: int = bounded(0, **THREADS)`"""
_INT64 = 2**63


class ConfigError(UserError, ValueError):
    """A config field that does not exist or has a bad value, or a config file that is bad."""


def _num(v: float) -> str:
    """A bound as written: 4294967296, not 4.29497e+09."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e18 else f"{v:g}"


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Range of a numeric field (or of each item of a list field), and a list's length."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    length: int | None = None
    label: str | None = None
    """how the config reference states the range, for one that depends on the machine"""

    def describe(self) -> str:
        lo = f"[{_num(self.ge)}" if self.ge is not None else ""
        lo = lo or (f"({_num(self.gt)}" if self.gt is not None else "")
        hi = f"{_num(self.le)}]" if self.le is not None else ""
        hi = hi or (f"{_num(self.lt)})" if self.lt is not None else "")
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return (">= " if lo[0] == "[" else "> ") + lo[1:]
        return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]

    def summary(self) -> str:
        """The range and length, as the config reference shows them: `in [0, 1), 2 values`."""
        ranged = any(b is not None for b in (self.ge, self.gt, self.le, self.lt))
        parts = [self.label or self.describe()] if ranged else []
        return ", ".join(parts + ([f"{self.length} values"] if self.length is not None else []))

    def ok(self, v: float) -> bool:
        return not (
            (self.ge is not None and v < self.ge)
            or (self.gt is not None and v <= self.gt)
            or (self.le is not None and v > self.le)
            or (self.lt is not None and v >= self.lt)
        )


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    length: int | None = None,
    label: str | None = None,
) -> Any:
    """A dataclass field with bounds, checked by `load_config` (and `check_bounds`):
    `ge`/`gt`/`le`/`lt` for a number or for each number in a list; `length` for a list; `label`
    for the config reference where the range depends on the machine."""
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={"bounds": Bounds(ge=ge, gt=gt, le=le, lt=lt, length=length, label=label)},
    )


def _check_field(value: Any, bounds: Bounds, where: str) -> None:
    if value is None:
        return
    items = value if isinstance(value, list | tuple) else [value]
    if (
        bounds.length is not None
        and isinstance(value, list | tuple)
        and len(value) != bounds.length
    ):
        raise ConfigError(f"{where} must have {bounds.length} values, got {len(value)}")
    if any(b is not None for b in (bounds.ge, bounds.gt, bounds.le, bounds.lt)):
        for v in items:
            if isinstance(v, int | float) and not isinstance(v, bool) and not bounds.ok(v):
                raise ConfigError(f"{where} must be {bounds.describe()}, got {value!r}")


def check_bounds(cfg: Any, where: str = "") -> None:
    """Check the declared bounds of every field of a built config, nested ones included
    (the loader does this; call it on a config built in Python or changed with `replace`)."""
    for f in dataclasses.fields(cfg):
        path = f"{where}.{f.name}" if where else f.name
        value = getattr(cfg, f.name)
        if "bounds" in f.metadata:
            _check_field(value, f.metadata["bounds"], path)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_bounds(value, path)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type `tp`, or raise ConfigError naming `where`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}"
        )
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            n = int(value) if not isinstance(value, float) else None
        except ValueError:
            n = None
        if n is None:
            try:
                f = float(value)
                n = int(f) if f == int(f) else None
            except (ValueError, OverflowError):
                n = None
        if n is None:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if not -_INT64 <= n < _INT64:
            raise ConfigError(f"{where}: {value!r} is too large for a 64-bit integer")
        return n
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(f):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return f
    if tp is str:
        if value is None or isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(str(value))
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config field {prefix}{unknown[0]}; "
            f"{cls.__name__} has: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], path)
        if "bounds" in fields[name].metadata:
            _check_field(kwargs[name], fields[name].metadata["bounds"], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _check_size(tree: Any, where: str) -> None:
    """Refuse a YAML document that is too deep or expands (through aliases) to too many values.

    The walk counts each visit, so a shared (aliased) subtree counts once per reference, as it
    would when the config is saved or copied; it stops at the limit, so it is cheap on a bomb.
    """
    stack, count = [(tree, 0)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ConfigError(
                f"{where}: expands to more than {MAX_YAML_NODES} values (YAML aliases?); refused"
            )
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels; refused")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for kv in node.items() for v in kv)
        elif isinstance(node, list | tuple | set):
            stack.extend((v, depth + 1) for v in node)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text safely (no Python objects), bounded in size, depth and alias expansion;
    errors are ConfigError naming `where` (a file, or a --set item)."""
    if len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_YAML_BYTES} bytes; refused")
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply; refused") from None
    _check_size(tree, where)
    return tree


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """`parse_yaml` of a file, checked to be a regular file of bounded size first."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is not a file")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {path}: larger than {MAX_YAML_BYTES} bytes; refused")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    return parse_yaml(text, f"{what} {path}")


def parse_overrides(overrides: list[str]) -> dict:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`; values parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: bad key {key!r}")
        try:
            value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
        except ConfigError as exc:
            if "refused" in str(exc):
                raise
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set both as a value and a section")
        node[parts[-1]] = value
    return tree


def _deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def to_dict(cfg: Any) -> Any:
    """A plain, YAML-safe dict of a config (Paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def defaults(cls: type) -> dict:
    """The defaults of `cls` as a plain dict, without constructing `cls` itself (its
    `__post_init__` may refuse its bare defaults, e.g. a preset that only a file completes)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default_factory())
        elif dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = defaults(hints[f.name])
    return out


Paths = str | Path | list[str | Path] | tuple[str | Path, ...] | None


def load_config(cls: type[T], path: Paths = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, updated by each YAML file in `path` (one or a list, in order), then by
    `--set` overrides; bounds and choices are checked while the config is built."""
    data: dict = defaults(cls)
    paths = [] if path is None else list(path) if isinstance(path, list | tuple) else [path]
    for p in paths:
        loaded = read_yaml(p) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        _check_keys(cls, loaded, "", f"config file {p}: ")
        _deep_update(data, loaded)
    if overrides:
        tree = parse_overrides(overrides)
        _check_keys(cls, tree, "", "--set ")
        _deep_update(data, tree)
    return _build(cls, data)


def _check_keys(cls: type, data: dict, where: str, source: str = "") -> None:
    """Unknown keys anywhere in `data` are errors (before defaults hide them)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(
                f"{source}unknown config field {path}; {cls.__name__} has: "
                f"{', '.join(sorted(names))}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _check_keys(tp, value, path, source)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the config as YAML beside a run's outputs (atomically)."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
