"""The README is generated from docs/readme/, fits on a few screens, and CI runs its test command."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command_verbatim():
    install_and_demo, install_and_test = _readme_commands()
    assert install_and_demo.endswith("pmalopti demo")
    assert install_and_test.endswith(
        "pip install torch==2.13.0 && pip install -e '.[dev,trl,verl-tests,math]' && python -m pytest -n 2"
    )
    ci = (ROOT / ".ci" / "run").read_text()
    # CI makes its own fresh venv, then runs the README's command from `pip install` on
    test_part = install_and_test[install_and_test.index("pip install torch") :]
    assert test_part in ci


def test_readme_fits_in_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_readme_and_generated_docs_are_up_to_date_with_their_sources(capsys):
    spec = importlib.util.spec_from_file_location("build_readme", ROOT / "docs" / "build_readme.py")
    build_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_readme)
    assert build_readme.main(["--check"]) == 0, capsys.readouterr().err
