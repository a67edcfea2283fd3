"""benchmarks/gpu_check.py keeps going: a section that fails or overruns is recorded in the JSON
and the next one runs (a micro plan on the CPU; the real sections run in `--tiny`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _load(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_failing_and_an_overrunning_section_are_recorded_and_the_rest_still_runs(
    tmp_path, monkeypatch
):
    gc = _load(monkeypatch)
    micro = dataclasses.replace(
        gc.TINY, hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32, vocab=512,
        checkpoints=2, budgets=(("grpo", 30.0), ("online_averager", 1.0), ("merge", 30.0)),
    )  # fmt: skip
    monkeypatch.setattr(gc, "TINY", micro)

    def boom(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(gc, "grpo_section", boom)
    monkeypatch.setattr(gc, "online_section", lambda *a: time.sleep(5))
    out = tmp_path / "check.json"
    assert gc.main(["--tiny", "--out", str(out), "--workdir", str(tmp_path)]) == 0
    record = json.loads(out.read_text())
    sections = record["sections"]
    assert record["schema"] == gc.SCHEMA and record["mode"] == "cpu-tiny" and record["finished"]
    assert (
        sections["grpo"]["status"] == "error" and "RuntimeError: boom" in sections["grpo"]["error"]
    )
    assert "boom" in sections["grpo"]["traceback"]
    assert sections["online_averager"]["status"] == "timeout"
    assert sections["online_averager"]["seconds"] < 4
    merge = sections["merge"]
    assert merge["status"] == "ok" and merge["result"]["checkpoints"] == 2
    assert merge["result"]["gb_read"] > 0
    assert sections["environment"]["result"]["torch"]
    assert record["model_parameters"] > 0
    assert not list(tmp_path.glob("pmalopti-gpu-check-*"))  # scratch checkpoints removed


def test_the_total_budget_skips_the_sections_it_cannot_fit(tmp_path, monkeypatch):
    gc = _load(monkeypatch)
    monkeypatch.setattr(gc, "environment", lambda device: time.sleep(2) or {"slow": True})
    out = tmp_path / "check.json"
    assert gc.main(["--tiny", "--out", str(out), "--total-budget", "11"]) == 0
    record = json.loads(out.read_text())
    # 11 s: 5 kept for the JSON, 2 spent here; < 5 s left is too little to start a section
    assert record["sections"]["environment"]["status"] == "ok"
    assert record["sections"]["build_model"] == {
        "status": "skipped",
        "error": "total budget spent",
    }
    assert record["finished"] and "grpo" not in record["sections"]
