"""pmalopti recover: the spike rule, choosing checkpoints before it, merging, resuming from the merge."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from pmalopti.cli import main
from pmalopti.config import load_config
from pmalopti.lm.pretrain import PretrainConfig, pretrain
from pmalopti.pma.select import discover_checkpoints
from pmalopti.pma.spike import checkpoints_before, find_spike, spike_from_log
from pmalopti.runtime.runlog import read_metrics

TINY = [
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.vocab_size=300",
    "data.num_docs=100",
    "data.block_size=32",
    "data.max_val_blocks=2",
    "train.steps=8",
    "train.batch_size=2",
    "train.save_every=2",
    "train.eval_every=0",
    "train.progress=false",
    "schedule.warmup_steps=1",
    "report.enabled=false",
]


@pytest.fixture(scope="module")
def spiky_run(tmp_path_factory):
    """A real 8-step run (checkpoints 2, 4, 6, 8) whose log gets a planted spike at step 7."""
    run = tmp_path_factory.mktemp("recover") / "run"
    pretrain(load_config(PretrainConfig, None, TINY), run)
    rows = read_metrics(run / "metrics.jsonl")
    original = [dict(r) for r in rows]
    rows[6]["loss"] = 100.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, original


def test_a_planted_spike_is_found_at_its_step_with_the_rule_reported():
    rng = random.Random(0)
    steps = list(range(1, 101))
    losses = [2.0 + 0.1 * rng.random() for _ in steps]
    losses[59] = 5.0  # step 60
    spike = find_spike(steps, losses, factor=2.0, window=20)
    assert spike is not None and spike.step == 60 and spike.loss == 5.0
    assert 2.0 < spike.median < 2.1
    assert "loss > 2 x median of the previous 20" in spike.describe()


def test_a_falling_or_noisy_curve_has_no_spike_and_nan_is_one():
    steps = list(range(1, 51))
    falling = [6.0 * 0.95**s for s in steps]
    assert find_spike(steps, falling) is None
    noisy = [2.0 + (0.5 if s % 2 else -0.5) for s in steps]  # +-25%: under a 2x rule
    assert find_spike(steps, noisy) is None
    noisy[30] = math.nan
    assert find_spike(steps, noisy).step == 31


def test_an_all_nan_run_and_a_nan_inside_the_warmup_are_spikes_at_their_first_step():
    steps = list(range(1, 21))
    assert find_spike(steps, [math.nan] * 20).step == 1  # no finite history at all
    losses = [3.0] * 20
    losses[2] = math.inf
    spike = find_spike(steps, losses, after=10)  # a divergence is never a warmup transient
    assert spike.step == 3 and "non-finite loss inf at step 3" in spike.describe()


def test_malformed_metrics_name_the_file_line_and_field(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for text, field in [
        ('{"step": "one", "loss": 1.0}\n', "'step'"),
        ('{"step": 1, "loss": "high"}\n', "'loss'"),
        ('{"step": 1, "loss": [1]}\n', "'loss'"),
    ]:
        (run / "metrics.jsonl").write_text(text)
        with pytest.raises(ValueError, match=rf"metrics.jsonl:1: field {field}"):
            spike_from_log(run, after=0)
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: not UTF-8"):
        spike_from_log(run, after=0)


def test_the_median_window_forgets_old_history():
    # Loss settles from 10 to 1; a 3.0 is a spike against the recent median only.
    steps = list(range(1, 41))
    losses = [10.0] * 20 + [1.0] * 19 + [3.0]
    assert find_spike(steps, losses, factor=2.0, window=10).step == 40
    assert find_spike(steps, losses, factor=2.0, window=40) is None


def test_bumps_before_the_end_of_warmup_are_not_judged():
    steps = list(range(1, 41))
    losses = [3.0] * 40
    losses[9] = 9.0  # step 10, inside a 20-step warmup
    losses[29] = 7.0  # step 30
    assert find_spike(steps, losses).step == 10
    spike = find_spike(steps, losses, after=20)
    assert spike.step == 30 and "after step 20" in spike.rule


def test_checkpoints_are_taken_only_when_their_own_loss_precedes_the_spike(spiky_run):
    run, _ = spiky_run
    ckpts = discover_checkpoints(run)

    def steps(spike, last):
        return [c.step for c in checkpoints_before(ckpts, spike, last).checkpoints]

    # the loss at step 7 is measured on checkpoint-6's weights, so 6 is excluded.
    assert steps(7, 2) == [2, 4]
    assert steps(8, 3) == [2, 4, 6]
    with pytest.raises(ValueError, match=r"spike at step 7 .* --last 3 asked, but only 2"):
        steps(7, 3)
    with pytest.raises(ValueError, match=r"spike at step 3 .*no checkpoint at or before step 1"):
        steps(3, 1)


def test_recover_detects_the_spike_and_writes_the_average_of_the_checkpoints_before_it(
    spiky_run, tmp_path, capsys
):
    run, _ = spiky_run
    assert spike_from_log(run, factor=2.0, window=20).step == 7
    out = tmp_path / "merged"
    assert main(["recover", "--run-dir", str(run), "--last", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "loss spike at step 7" in printed and "rolling median" in printed
    merged = load_file(out / "model.safetensors")
    a = load_file(run / "checkpoint-2" / "model.safetensors")
    b = load_file(run / "checkpoint-4" / "model.safetensors")
    for k, v in merged.items():
        torch.testing.assert_close(v, (a[k] + b[k]) / 2, rtol=1e-6, atol=1e-7)
    record = json.loads((out / "pmalopti_merge.json").read_text())
    assert record["spike_step"] == 7 and [i["step"] for i in record["inputs"]] == [2, 4]


def test_resume_continues_the_schedule_and_data_from_the_merged_checkpoint(spiky_run, tmp_path):
    run, original = spiky_run
    out = tmp_path / "merged"
    args = [
        "recover",
        "--run-dir",
        str(run),
        "--spike-step",
        "7",
        "--last",
        "2",
        "-o",
        str(out),
        "--resume",
    ]
    assert main(args) == 0
    resumed = read_metrics(tmp_path / "merged-resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in original[4:]]
    assert [r["tokens"] for r in resumed] == [r["tokens"] for r in original[4:]]
    # Different starting weights (the merge, not checkpoint-4), so a different first loss.
    assert resumed[0]["loss"] != original[4]["loss"]


def test_bad_recover_inputs_fail_clearly_and_write_nothing(spiky_run, tmp_path, capsys):
    run, _ = spiky_run
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                "recover",
                "--run-dir",
                str(empty),
                "--spike-step",
                "5",
                "--last",
                "1",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "has no checkpoint-<step> or step<N> sub-folders" in capsys.readouterr().err
    assert (
        main(
            [
                "recover",
                "--run-dir",
                str(run),
                "--spike-step",
                "7",
                "--last",
                "9",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "--last 9 asked, but only 2" in capsys.readouterr().err
    assert (
        main(
            [
                "recover",
                "--run-dir",
                str(run),
                "--spike-step",
                "2",
                "--last",
                "1",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert (
        "(checkpoints at steps <= 0 count as before it): no checkpoint" in capsys.readouterr().err
    )
    assert (
        main(
            [
                "recover",
                "--run-dir",
                str(run),
                "--last",
                "1",
                "--factor",
                "1000",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no loss spike" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
