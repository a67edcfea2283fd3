"""Every command, fed hostile inputs, gives one clear line and exit code 2, or does the right thing.

The corpus is `hostile_cases.py`; `make_results.py` runs the same cases and writes RESULTS.md.
For each case: exit code 2, exactly one line on stderr, no traceback, nothing at the output path,
every input (and a secret file beside them) byte-for-byte unchanged, and no byte of the secret in
any message or output. Cases marked "ok" must instead succeed, inputs unchanged.
"""

from __future__ import annotations

import pytest
from hostile_cases import CASES, XFAIL
from hostile_harness import Workspace, run_call


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[case.id])] if case.id in XFAIL else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", _params())
def test_a_hostile_input_gets_one_clear_line_or_is_handled(case, tmp_path):
    ws = Workspace(tmp_path / "ws")
    out = run_call(case.build(ws))
    want = "clear error" if case.expect == "error" else "handled"
    detail = (out.error or out.stderr or out.stdout)[-2000:]
    assert out.kind() == want, f"rc={out.rc} {out.kind()}: {detail}"
    if case.match:
        assert case.match in out.lines[0], f"the error does not name {case.match!r}: {detail}"


def test_the_corpus_is_a_few_hundred_cases_with_unique_names():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 300
    assert set(XFAIL) <= set(ids)
