"""The docs are generated from the code and the committed results, and say what the code does."""

import ast
import dataclasses
import importlib
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "docs") not in sys.path:  # docs/docgen is a package of the docs, not of pmalopti
    sys.path.insert(0, str(ROOT / "docs"))


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("build_readme", ROOT / "docs" / "build_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_block_agrees_with_its_source(gen):
    from docgen import blocks

    for path, _ in gen.outputs().items():
        if path == gen.CONFIG_REFERENCE:
            continue
        text = path.read_text(encoding="utf-8")
        assert blocks.stale_blocks(text, gen.render) == [], path


def test_a_number_edited_by_hand_in_the_readme_is_caught(gen):
    from docgen import blocks

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- gen:results -->")
    digit = re.compile(r"\d").search(text, start)
    wrong = "7" if digit.group() != "7" else "8"
    edited = text[: digit.start()] + wrong + text[digit.end() :]
    assert blocks.stale_blocks(edited, gen.render) == ["results"]


def test_the_numbers_are_read_from_the_result_files(gen, tmp_path, monkeypatch):
    from docgen import common, results

    rel = Path("experiments/pma_grid/results/lr1e-2/summary.json")
    copy = tmp_path / rel
    copy.parent.mkdir(parents=True)
    shutil.copy(ROOT / rel, copy)
    data = json.loads(copy.read_text())
    data["live"]["750"][0] = 9.8765
    copy.write_text(json.dumps(data))
    monkeypatch.setattr(common, "ROOT", tmp_path)
    assert "9.8765 ±" in results.pma_grid_table("lr1e-2")


def _resolves(name: str) -> bool:
    """'pmalopti.rl.loss.policy_loss' names an importable module and its attributes."""
    module_name, attrs = name, []
    while True:
        try:
            obj = importlib.import_module(module_name)
            break
        except ModuleNotFoundError:
            if "." not in module_name:
                return False
            module_name, _, tail = module_name.rpartition(".")
            attrs.insert(0, tail)
    for attr in attrs:
        obj = getattr(obj, attr, None)
        if obj is None:
            return False
    return True


def _named_in(text: str) -> set[str]:
    """`pmalopti.x.y` names in backticks, and what the page's Python blocks import from pmalopti."""
    names = set(re.findall(r"`(pmalopti(?:\.\w+)+)", text))
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pmalopti"):
                names |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names if a.name.startswith("pmalopti")}
    return names


def test_a_gpu_run_of_the_gpu_check_is_summarised_from_its_json(tmp_path, monkeypatch):
    from docgen import common, results

    assert "Not yet measured" in results.gpu_sentence() or results.gpu_check_files()
    data = json.loads((ROOT / "benchmarks/results/gpu_check_cpu_tiny.json").read_text())
    data["mode"] = "gpu"
    data["sections"]["grpo"]["result"]["grpo"]["steps_per_s"] = 12.3456
    (tmp_path / "benchmarks/results").mkdir(parents=True)
    (tmp_path / "benchmarks/results/gpu_check_test.json").write_text(json.dumps(data))
    monkeypatch.setattr(common, "ROOT", tmp_path)
    assert "built-in GRPO 12.35 steps/s" in results.gpu_sentence()


def test_every_function_named_on_the_design_page_exists():
    names = _named_in((ROOT / "docs" / "design.md").read_text(encoding="utf-8"))
    assert len(names) > 30
    assert sorted(n for n in names if not _resolves(n)) == []


def test_every_module_function_and_import_named_in_the_readme_and_docs_exists():
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        names = _named_in(page.read_text(encoding="utf-8"))
        missing += [f"{page.relative_to(ROOT)}: {n}" for n in sorted(names) if not _resolves(n)]
    assert missing == []


def test_every_config_field_has_a_docstring_and_a_row_in_the_reference(gen):
    from docgen import configs

    assert configs.missing_field_docs() == []
    page = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    for cls in configs.discover():
        section = page.split(f'<a id="{configs.anchor(cls)}"></a>')[1].split("<a id=")[0]
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in section, f"{cls.__name__}.{f.name}"


def test_the_command_table_lists_every_subcommand_with_its_help_line(gen):
    from pmalopti.cli import build_parser

    table = (ROOT / "README.md").read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for choice in sub._choices_actions:
        assert f"| `pmalopti {choice.dest}` | {choice.help} |" in table


def test_code_and_docs_cite_the_design_page_inside_the_repository():
    outside = "DESIGN" + ".md"
    cited = [
        f"{p.relative_to(ROOT)}"
        for top in ("src", "tests", "docs", "examples", "benchmarks", "experiments", "configs")
        for p in (ROOT / top).rglob("*")
        if p.suffix in (".py", ".md", ".yaml", ".sh") and outside in p.read_text(encoding="utf-8")
    ]
    assert cited == []


def test_relative_links_in_the_readme_and_docs_point_to_files_that_exist():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
