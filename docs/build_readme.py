"""Generate README.md and every generated part of docs/ from the code and the committed results.

    python docs/build_readme.py          # rewrite README.md, docs/config-reference.md, docs/*.md blocks
    python docs/build_readme.py --check  # exit 1 naming what is out of date (a test runs this)

README.md is docs/readme/*.md (sorted by name) joined. Any page may hold generated blocks,
`<!-- gen:KIND ARGS -->` ... `<!-- /gen -->`, re-rendered from their source on every run:
the command table and option tables from `pmalopti.cli.build_parser()`, the package table from
the packages' docstrings, result tables and sentences from committed result files
(docs/docgen/results.py). docs/config-reference.md is generated whole from the config dataclasses.
Run it after changing a command, a config field, a package docstring or a result file.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "docs")]

from docgen import blocks, cli_tables, configs, layout, pma_init, results  # noqa: E402

PARTS = ROOT / "docs" / "readme"
README = ROOT / "README.md"
CONFIG_REFERENCE = ROOT / "docs" / "config-reference.md"

RENDERERS = {
    "commands": lambda args: cli_tables.command_table(),
    "options": lambda args: cli_tables.options_table(args),
    "packages": lambda args: layout.package_table(),
    "tree": lambda args: layout.file_tree(),
    "results": lambda args: results.readme_results(),
    "pma_grid": lambda args: results.pma_grid_table(*args),
    "pma_tiny": lambda args: results.pma_tiny_table(),
    "pma_init_spike": lambda args: pma_init.spike_table(*args),
    "pma_init_ct_sft": lambda args: pma_init.ct_sft_table(),
    "rl_kk": lambda args: results.rl_table(args),
    "rl_fig1": lambda args: results.rl_fig1_table(args),
    "rl_effect": lambda args: results.rl_effect_table(),
    "rl_effect_sentence": lambda args: results.rl_effect_sentence(),
    "reward_worst_case": lambda args: results.reward_worst_case(),
    "hostile": lambda args: results.hostile_round(),
    "merge_bench": lambda args: results.merge_benchmark(),
    "threads_bench": lambda args: results.threads_benchmark(),
    "merge_dcp": lambda args: results.merge_dcp_table(),
    "online_write": lambda args: results.online_write_table(),
}


def render(kind: str, args: list[str]) -> str:
    if kind not in RENDERERS:
        raise KeyError(f"unknown generated block kind {kind!r}; known: {sorted(RENDERERS)}")
    return RENDERERS[kind](args)


def readme_source() -> str:
    """The README's parts joined, blocks as they stand in the parts."""
    return "\n".join(
        p.read_text(encoding="utf-8").strip() + "\n" for p in sorted(PARTS.glob("*.md"))
    )


def outputs() -> dict[Path, str]:
    """Every generated file and page, as it should be now."""
    out = {README: blocks.fill(readme_source(), render)}
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page == CONFIG_REFERENCE:
            continue
        out[page] = blocks.fill(page.read_text(encoding="utf-8"), render)
    out[CONFIG_REFERENCE] = configs.reference_page()
    return out


def main(argv: list[str]) -> int:
    stale = []
    for path, text in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if "--check" in argv:
            where = blocks.stale_blocks(current, render) if current else []
            detail = f" (blocks: {', '.join(where)})" if where else ""
            stale.append(f"{path.relative_to(ROOT)}{detail}")
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            "out of date: " + "; ".join(stale) + "\nrun: python docs/build_readme.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
