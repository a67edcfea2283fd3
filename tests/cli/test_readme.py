"""The README is assembled from docs/readme/ and its test command is what CI runs."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command_verbatim():
    install_and_demo, install_and_test = _readme_commands()
    assert install_and_demo.endswith("pmalopti demo")
    ci = (ROOT / ".ci" / "run").read_text()
    # CI makes its own fresh venv, then runs the README's command from `pip install` on
    test_part = install_and_test[install_and_test.index("pip install torch") :]
    assert test_part in ci


def test_readme_is_up_to_date_with_its_sources():
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "build_readme.py"), "--check"], capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()
