"""Safe YAML input: no Python objects, bounded in size, depth and alias expansion.

Errors are `ConfigError`s naming the file (or the `--set` item) and where in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pmalopti.errors import ConfigError

MAX_YAML_BYTES = 1 << 20
"""largest YAML config file read (1 MiB)"""
MAX_YAML_NODES = 100_000
"""most values a YAML document may hold once its aliases are expanded (refuses alias bombs)"""
MAX_YAML_DEPTH = 64
"""deepest nesting of a YAML document"""


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
