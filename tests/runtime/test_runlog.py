"""metrics.jsonl, its truncation on resume, and the TensorBoard / W&B mirrors."""

from __future__ import annotations

import json
import sys
import types

import pytest

from pmalopti.errors import UserError
from pmalopti.runtime.runlog import RunLog, read_metrics


def test_records_are_appended_one_json_line_each_and_a_fresh_run_starts_empty(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9}\n')
    with RunLog(tmp_path) as log:
        log.write({"step": 1, "loss": 2.0, "phase": "warmup"})
        log.write({"step": 2, "loss": 1.5})
    assert read_metrics(tmp_path) == [
        {"step": 1, "loss": 2.0, "phase": "warmup"},
        {"step": 2, "loss": 1.5},
    ]


def test_resuming_drops_lines_logged_after_the_checkpoint(tmp_path):
    lines = "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4))
    (tmp_path / "metrics.jsonl").write_text(lines)
    with RunLog(tmp_path, resume_step=2) as log:
        log.write({"step": 3, "loss": 0.1})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_an_old_grpo_log_jsonl_is_continued_as_metrics_jsonl(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    with RunLog(tmp_path, resume_step=1) as log:
        log.write({"step": 2})
    assert not (tmp_path / "log.jsonl").exists()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_a_malformed_line_is_named_by_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2: expected a JSON object"):
        read_metrics(tmp_path)


def test_tensorboard_events_go_to_tb(tmp_path):
    pytest.importorskip("tensorboard")
    with RunLog(tmp_path, "tensorboard") as log:
        log.write({"step": 1, "loss": 2.0, "phase": "stable", "bad": float("nan")})
    assert any((tmp_path / "tb").iterdir())


def test_wandb_gets_the_finite_numbers_and_a_missing_wandb_is_one_clear_error(
    tmp_path, monkeypatch
):
    logged = []
    run = types.SimpleNamespace(log=lambda d, step: logged.append((step, d)), finish=lambda: None)
    fake = types.SimpleNamespace(init=lambda **kw: run)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with RunLog(tmp_path, "wandb", config={"seed": 0}) as log:
        log.write({"step": 3, "loss": 1.0, "phase": "decay", "ok": True})
    assert logged == [(3, {"loss": 1.0})]
    monkeypatch.setitem(sys.modules, "wandb", None)  # import raises ImportError
    with pytest.raises(UserError, match="pip install wandb"):
        RunLog(tmp_path, "wandb")
