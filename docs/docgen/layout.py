"""The package table (one line per package) and the per-file tree, from docstrings."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "pmalopti"
TREE_DIRS = ["src/pmalopti", "benchmarks", "examples", "experiments", "configs"]


def first_line(path: Path) -> str:
    """The first line of a module's docstring, of a YAML file's first comment, or of a README."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        try:
            doc = ast.get_docstring(ast.parse(text))
        except SyntaxError:
            return ""
        return doc.strip().splitlines()[0] if doc else ""
    prefix = "#" if path.suffix in (".yaml", ".yml", ".md", ".sh") else None
    if prefix:
        for line in text.splitlines():
            if line.startswith("#") and not line.startswith("#!"):
                return line.lstrip("# ").strip()
    return ""


def package_table() -> str:
    rows = ["| package | what it holds |", "|---|---|"]
    for path in sorted(PKG.iterdir()):
        if path.is_dir() and (path / "__init__.py").exists():
            rows.append(f"| `pmalopti.{path.name}` | {first_line(path / '__init__.py')} |")
    for path in sorted(PKG.glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            rows.append(f"| `pmalopti.{path.stem}` | {first_line(path)} |")
    return "\n".join(rows)


def file_tree() -> str:
    lines = ["```"]
    for top in TREE_DIRS:
        base = ROOT / top
        if not base.exists():
            continue
        files = sorted(
            p
            for p in base.rglob("*")
            if p.is_file()
            and "__pycache__" not in p.parts
            and "results" not in p.relative_to(base).parts[:-1]
            and "logs" not in p.relative_to(base).parts[:-1]
            and p.suffix in (".py", ".yaml", ".yml", ".sh", ".md")
            and not (p.name == "__init__.py" and not first_line(p))
        )
        for p in files:
            rel = p.relative_to(ROOT).as_posix()
            desc = first_line(p)
            lines.append(f"{rel:<48} {desc}".rstrip() if desc else rel)
    lines.append("```")
    return "\n".join(lines)
