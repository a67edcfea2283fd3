"""The config reference: every field of every config dataclass, read from the code.

A config is a dataclass named `...Config` in `pmalopti` (integrations excluded: their configs
extend TRL's and verl's, and only their own fields are listed, read from the source without
importing the framework). Each field's text is its docstring, the string literal right below it
(or `metadata={"help": ...}`, TRL's convention). Sections are the configs that commands load
(`load_config(Cls, ...)`) and the configs no other config nests; the nested ones follow their root.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import pkgutil
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

SKIP_PACKAGES = ("pmalopti.integrations",)
FRAMEWORK_CONFIGS = {  # module file -> classes listed with their own fields only
    "integrations/trl.py": ["LoptiGRPOConfig"],
    "integrations/verl.py": ["PmaloptiPolicyLossConfig"],
}


def _src_root() -> Path:
    import pmalopti

    return Path(pmalopti.__file__).parent


def _field_docs_from_node(node: ast.ClassDef) -> dict[str, str]:
    docs: dict[str, str] = {}
    body = node.body
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        nxt = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[name] = " ".join(nxt.value.value.split())
            continue
        call = stmt.value
        if isinstance(call, ast.Call):
            for kw in call.keywords:
                if kw.arg == "metadata":
                    try:
                        meta = ast.literal_eval(kw.value)
                    except ValueError:
                        continue
                    if isinstance(meta, dict) and isinstance(meta.get("help"), str):
                        docs[name] = " ".join(meta["help"].split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring, for `cls` and the dataclasses it extends."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass.__module__.split(".")[0] != "pmalopti":
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        docs.update(_field_docs_from_node(tree.body[0]))
    return docs


def discover() -> list[type]:
    """Every `...Config` dataclass defined in pmalopti (integrations excluded), by module."""
    import pmalopti

    found = []
    for info in pkgutil.walk_packages(pmalopti.__path__, "pmalopti."):
        if info.name.startswith(SKIP_PACKAGES) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == info.name
                and name.endswith("Config")
            ):
                found.append(obj)
    return found


def loaded_configs() -> set[str]:
    """Names passed as the first argument of `load_config(...)`, `load_run_config(...)` (any
    `load*config` call) anywhere in the package."""
    names = set()
    for path in _src_root().rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and re.fullmatch(
                    r"load\w*config", getattr(node.func, "id", getattr(node.func, "attr", "")) or ""
                )
                and node.args
                and isinstance(node.args[0], ast.Name)
            ):
                names.add(node.args[0].id)
    return names


def anchor(cls: type) -> str:
    module = cls.__module__.removeprefix("pmalopti.").replace(".", "-").replace("_", "-")
    return f"{module}-{cls.__name__.lower()}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested(tp: Any) -> type | None:
    return tp if inspect.isclass(tp) and dataclasses.is_dataclass(tp) else None


def type_text(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " / ".join(str(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = " or ".join(type_text(a) for a in args)
        return f"{inner} or null" if len(args) < len(get_args(tp)) else inner
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return " / ".join(str(m.value) for m in tp)
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, enum.Enum):
        return str(v.value)
    if isinstance(v, float):
        return re.sub(
            r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), repr(v)
        )
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_scalar(x)}" for k, x in v.items()) + "}"
    return str(v)


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _scalar(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return _scalar(f.default_factory())  # type: ignore[misc]
    return "required"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


class Reference:
    """The configs, their nesting and their docs."""

    def __init__(self) -> None:
        self.configs = discover()
        by_name = {c.__name__: c for c in self.configs}
        nested: set[type] = set()
        for c in self.configs:
            for tp in _hints(c).values():
                if _nested(tp):
                    nested.add(tp)
        loaded = {by_name[n] for n in loaded_configs() if n in by_name}
        self.roots = [c for c in self.configs if c in loaded or c not in nested]
        self.missing_docs: list[str] = []

    def order(self) -> list[tuple[type, list[str]]]:
        """(config, dotted prefixes it is set under) in page order: each root, then its sections."""
        seen: dict[type, list[str]] = {}
        out: list[type] = []

        def visit(cls: type, root: type, prefix: str) -> None:
            if cls not in seen:
                seen[cls] = []
                out.append(cls)
            if prefix:
                seen[cls].append(f"`{prefix}*` in `{root.__name__}`")
            for f in dataclasses.fields(cls):
                sub = _nested(_hints(cls)[f.name])
                if sub is not None and sub not in self.roots:
                    visit(sub, root, f"{prefix}{f.name}.")

        for root in self.roots:
            visit(root, root, "")
        return [(c, seen[c]) for c in out]

    def section(self, cls: type, prefixes: list[str]) -> str:
        docs = field_docs(cls)
        hints = _hints(cls)
        lines = [f'<a id="{anchor(cls)}"></a>', f"## `{cls.__name__}` (`{cls.__module__}`)", ""]
        doc = inspect.getdoc(cls) or ""
        if doc and not doc.startswith(cls.__name__ + "("):
            lines += [doc.split("\n\n")[0].replace("\n", " "), ""]
        if prefixes:
            lines += [f"Set as {', '.join(prefixes)}.", ""]
        lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            tp = hints[f.name]
            sub = _nested(tp)
            if sub is not None:
                kind = f"[`{sub.__name__}`](#{anchor(sub)})"
                default = "section"
            else:
                kind = _cell(type_text(tp))
                if "bounds" in f.metadata:  # declared on the field with pmalopti.config.bounded
                    kind += ", " + _cell(f.metadata["bounds"].summary())
                default = _cell(default_text(f))
            text = docs.get(f.name, "")
            if not text:
                self.missing_docs.append(f"{cls.__module__}.{cls.__name__}.{f.name}")
            lines.append(f"| `{f.name}` | {kind} | `{default}` | {_cell(text)} |")
        return "\n".join(lines)


def framework_sections() -> str:
    """The own fields of the configs that extend TRL's and verl's, read from the source."""
    parts = []
    for rel, names in FRAMEWORK_CONFIGS.items():
        path = _src_root() / rel
        if not path.exists():
            continue
        module = "pmalopti." + rel.removesuffix(".py").replace("/", ".")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if not (isinstance(node, ast.ClassDef) and node.name in names):
                continue
            docs = _field_docs_from_node(node)
            base = ast.unparse(node.bases[0]) if node.bases else ""
            anchor_id = f"{module.removeprefix('pmalopti.').replace('.', '-')}-{node.name.lower()}"
            lines = [f'<a id="{anchor_id}"></a>', f"## `{node.name}` (`{module}`)", ""]
            lines += [f"Every field of `{base}`, plus:", ""]
            lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    default = ""
                    if isinstance(stmt.value, ast.Call):
                        for kw in stmt.value.keywords:
                            if kw.arg == "default":
                                default = ast.unparse(kw.value)
                    elif stmt.value is not None:
                        default = ast.unparse(stmt.value)
                    default = {"None": "null", "True": "true", "False": "false"}.get(
                        default, default
                    )
                    name = stmt.target.id
                    lines.append(
                        f"| `{name}` | {_cell(ast.unparse(stmt.annotation))} | `{default}` "
                        f"| {_cell(docs.get(name, ''))} |"
                    )
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


HEADER = """# Config reference

Generated by `python docs/build_readme.py` from the config dataclasses' field docstrings; do not
edit by hand (a test checks it is up to date). Load a config with `--config FILE` (YAML) and
override any field with `--set dotted.key=value`; a run saves the config it used beside its
outputs. Ranges are checked when the config is built: a bad value is an error naming the field.
"""


def used_by(cls: type) -> str:
    """The commands whose module names `cls` (else the one its docstring opens with)."""
    commands = sorted(
        f"`pmalopti {path.stem}`"
        for path in (_src_root() / "commands").glob("*.py")
        if not path.stem.startswith("_")
        and re.search(rf"\b{cls.__name__}\b", path.read_text(encoding="utf-8"))
    )
    if not commands:
        m = re.match(r"`(pmalopti \w+)`", inspect.getdoc(cls) or "")
        commands = [f"`{m.group(1)}`"] if m else []
    return ", ".join(commands) or "Python API"


def reference_page() -> str:
    ref = Reference()
    order = ref.order()
    toc = ["| config | used by | module |", "|---|---|---|"]
    for cls in ref.roots:
        toc.append(f"| [`{cls.__name__}`](#{anchor(cls)}) | {used_by(cls)} | `{cls.__module__}` |")
    sections = [ref.section(cls, prefixes) for cls, prefixes in order]
    framework = framework_sections()
    parts = [HEADER, "\n".join(toc), *sections]
    if framework:
        parts.append(framework)
    return "\n\n".join(parts) + "\n"


def missing_field_docs() -> list[str]:
    ref = Reference()
    for cls, prefixes in ref.order():
        ref.section(cls, prefixes)
    return ref.missing_docs
