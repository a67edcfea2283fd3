"""The hostile-input corpus: every command, fed what a careless or hostile user would give it.

Each case builds its inputs in a fresh `Workspace` and returns the `Call` to make. `expect` is
"error" (exit code 2, one line on stderr, no traceback, nothing at the output path, inputs
unchanged, no byte of the outside secret anywhere) or "ok" (exit code 0, inputs unchanged).
`XFAIL` lists cases that wait on another part of the work, with the reason. The cases live in
`cases_*.py`, one file per group of commands.
"""

from __future__ import annotations

import cases_eval_kk  # noqa: F401 -- importing a group registers its cases
import cases_merge  # noqa: F401
import cases_models  # noqa: F401
import cases_recover  # noqa: F401
import cases_training  # noqa: F401
from hostile_registry import CASES, XFAIL

__all__ = ["CASES", "XFAIL"]
