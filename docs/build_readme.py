"""Assemble README.md from docs/readme/*.md (sorted by name) and the file tree.

    python docs/build_readme.py          # rewrite README.md
    python docs/build_readme.py --check  # exit 1 if README.md is out of date (a test runs this)

The file tree lists every source file with the first line of its module docstring.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ROOT / "docs" / "readme"
TREE_DIRS = ["src/pmalopti", "benchmarks", "examples", "experiments", "configs", "tests"]


def _describe(path: Path) -> str:
    if path.suffix == ".py":
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except SyntaxError:
            doc = None
        return (doc or "").strip().splitlines()[0] if doc else ""
    if path.suffix in (".yaml", ".yml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                return line.lstrip("# ").strip()
        return ""
    if path.name == "README.md":
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                return line.lstrip("# ").strip()
    return ""


def file_tree() -> str:
    lines = ["## Files", "", "One line per file (the first line of its docstring or comment).", ""]
    lines.append("```")
    for top in TREE_DIRS:
        base = ROOT / top
        if not base.exists():
            continue
        files = sorted(
            p
            for p in base.rglob("*")
            if p.is_file()
            and "__pycache__" not in p.parts
            and p.suffix in (".py", ".yaml", ".yml", ".sh", ".md")
            and not (p.name == "__init__.py" and not _describe(p))
        )
        if top in ("tests", "experiments"):
            files = [p for p in files if p.suffix in (".py", ".md") and p.name != "conftest.py"]
        for p in files:
            rel = p.relative_to(ROOT).as_posix()
            desc = _describe(p)
            lines.append(f"{rel:<48} {desc}".rstrip() if desc else rel)
    lines.append("```")
    return "\n".join(lines) + "\n"


def build() -> str:
    parts = [p.read_text(encoding="utf-8").strip() + "\n" for p in sorted(PARTS.glob("*.md"))]
    return "\n".join([*parts, file_tree()])


def main(argv: list[str]) -> int:
    text = build()
    readme = ROOT / "README.md"
    if "--check" in argv:
        if readme.read_text(encoding="utf-8") != text:
            print("README.md is out of date: run python docs/build_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
