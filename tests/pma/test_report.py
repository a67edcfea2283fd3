"""report.py and the PMA evaluation: tables, figures, merges equal their reference."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pmalopti.pma.in_memory import merged_state_dict
from pmalopti.pma.report import (
    markdown_table,
    method_label,
    plot_curves,
    pma_table,
    write_pma_report,
)
from pmalopti.pma.spec import MergeSpec

RESULT = {
    "run": "r",
    "n": 3,
    "stride": 1,
    "interval_steps": 10,
    "methods": ["sma", "ema:0.2"],
    "val_tokens": 1000,
    "live": [
        {"step": 10, "tokens": 100, "val_loss": 3.0, "phase": "stable"},
        {"step": 20, "tokens": 200, "val_loss": 2.6, "phase": "stable"},
        {"step": 30, "tokens": 300, "val_loss": 2.5, "phase": "stable"},
        {"step": 40, "tokens": 400, "val_loss": 2.1, "phase": "decay"},
    ],
    "points": [
        {
            "step": 30,
            "tokens": 300,
            "live": 2.5,
            "sma": 2.3,
            "ema:0.2": 2.4,
            "merged_steps": [10, 20, 30],
        }
    ],
    "annealed": {"step": 40, "tokens": 400, "val_loss": 2.1},
    "schedule": {"total_steps": 40, "warmup_steps": 5, "decay_steps": 10},
}


def test_markdown_tables_have_a_header_rule_and_formatted_floats():
    text = markdown_table(["a", "b"], [[1, 0.123456], ["x", float("nan")]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.1235 |", "| x | nan |"]


def test_the_pma_table_gives_the_best_merge_gain_and_its_share_of_the_anneal_gain():
    text = pma_table(RESULT)
    row = next(line for line in text.splitlines() if line.startswith("| 30 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["30", "300", "2.5000", "2.3000", "2.4000", "0.2000", "50%"]  # 0.2 of 0.4
    assert "EMA α=0.2" in text and "validation loss 2.1000" in text
    assert method_label("wma") == "WMA"


def test_the_report_writes_json_markdown_and_a_png(tmp_path):
    paths = write_pma_report(RESULT, tmp_path / "report")
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| step |" in paths["markdown"].read_text()
    png = plot_curves({"a": ([1, 2, 3], [3.0, 2.0, 1.0])}, tmp_path / "c.png", vlines={"spike": 2})
    assert png.stat().st_size > 1000


def test_the_in_memory_merge_equals_the_weighted_sum_and_sma_of_one_is_itself(tiny_lm, tmp_path):
    model, _ = tiny_lm
    paths = []
    for i in range(3):
        m = type(model)(model.config)
        m.load_state_dict(model.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * i)
        m.save_pretrained(tmp_path / f"c{i}")
        paths.append(tmp_path / f"c{i}")
    sds = [load_file(p / "model.safetensors") for p in paths]
    w = MergeSpec.parse("ema:0.2").merge_weights(3)
    assert w == pytest.approx([0.64, 0.16, 0.2])
    merged = merged_state_dict(paths, w)
    for k in merged:
        ref = sum(wi * sd[k].double() for wi, sd in zip(w, sds, strict=True))
        torch.testing.assert_close(merged[k].double(), ref, rtol=1e-6, atol=1e-6)
    one = merged_state_dict(paths[:1], MergeSpec().merge_weights(1))
    assert all(torch.equal(one[k], sds[0][k]) for k in one)
