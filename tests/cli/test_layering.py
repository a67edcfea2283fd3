"""The dependency rules of docs/design.md, checked on every module's imports (parsed with ast)."""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "pmalopti"

# package -> pmalopti packages it must never import
FORBIDDEN = {
    "rl": {"pma", "tasks", "lm", "grpo", "integrations", "demo", "commands", "cli"},
    "pma": {"rl", "tasks", "lm", "grpo", "integrations", "demo", "commands", "cli"},
    "tasks": {"rl", "pma", "lm", "grpo", "integrations", "demo", "commands", "cli"},
    "runtime": {
        "rl", "pma", "tasks", "lm", "grpo", "integrations", "demo", "commands", "cli",
        "models", "config",
    },
    "lm": {"demo", "commands", "cli"},
    "grpo": {"demo", "commands", "cli"},
    "integrations": {"demo", "commands", "cli"},
    "demo": {"commands", "cli"},
    "commands": {"cli"},
}  # fmt: skip
FRAMEWORKS = {"trl", "verl"}  # imported only inside pmalopti.integrations


def _package(module: str) -> str:
    """'pmalopti.rl.loss' -> 'rl'; 'pmalopti.cli' -> 'cli'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, also inside functions, and of
    every string that is exactly a pmalopti module name (a lazy `importlib.import_module`)."""
    found = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - (node.level - 1)]
                name = ".".join([*stem, node.module] if node.module else stem)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from pmalopti import rl` imports the package rl
            if name == "pmalopti":
                found += [(node.lineno, f"pmalopti.{a.name}") for a in node.names]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"pmalopti(\.\w+)+", node.value)
        ):
            found.append((node.lineno, node.value))
    return found


def violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """Broken rules, as 'module:line imports target (rule)', for {module: (source, is_package)}."""
    out = []
    for module, (source, is_package) in sorted(modules.items()):
        pkg = _package(module)
        for line, target in imports(module, source, is_package):
            top = target.split(".")[0]
            if top in FRAMEWORKS and pkg != "integrations":
                out.append(f"{module}:{line} imports {target} (only integrations may)")
            if top == "pmalopti":
                dep = _package(target)
                if dep and dep != pkg and dep in FORBIDDEN.get(pkg, ()):
                    out.append(f"{module}:{line} imports {target} ({pkg} must not import {dep})")
    return out


def package_modules() -> dict[str, tuple[str, bool]]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        is_package = path.name == "__init__.py"
        name = ".".join(rel.parts[:-1] if is_package else rel.parts)
        out[name] = (path.read_text(encoding="utf-8"), is_package)
    return out


def test_every_module_imports_only_in_the_allowed_direction():
    assert violations(package_modules()) == []


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        ("pmalopti.rl.loss", "from pmalopti.pma import merge_weights\n", "rl must not import pma"),
        (
            "pmalopti.pma.online",
            "def f():\n    import pmalopti.lm.loop\n",
            "pma must not import lm",
        ),
        ("pmalopti.tasks.kk.reward", "from ...rl import loss\n", "tasks must not import rl"),
        ("pmalopti.runtime.fs", "from pmalopti import config\n", "runtime must not import config"),
        ("pmalopti.lm.sft", "from pmalopti.commands import sft\n", "lm must not import commands"),
        ("pmalopti.grpo.trainer", "import trl\n", "only integrations may"),
        ("pmalopti.demo.run", "from verl import DataProto\n", "only integrations may"),
        (
            "pmalopti.pma.__init__",
            '_LAZY = {"PMACallback": "pmalopti.integrations.hf_trainer"}\n',
            "pma must not import integrations",
        ),
    ],
)
def test_a_deliberate_violation_is_reported(module, source, broken):
    modules = package_modules() | {module: (source, False)}
    found = violations(modules)
    assert any(module in v and broken in v for v in found), found


def test_integrations_may_import_trl_and_a_lower_package():
    modules = {"pmalopti.integrations.x": ("import trl\nfrom pmalopti.rl import loss\n", False)}
    assert violations(modules) == []
