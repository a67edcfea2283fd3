"""The uninterrupted 6-step pretrain run that several lm tests read."""

from __future__ import annotations

import pytest
from test_pretrain import tiny_cfg

from pmalopti.lm.pretrain import pretrain


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One uninterrupted 6-step run, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("pretrain") / "run"
    result = pretrain(tiny_cfg(), run)
    return run, result
