"""Selection never guesses: exact spacing or a refusal naming the missing steps, --nearest shown,
explicit inputs ordered by step, one rule for --until and recover, warmup/decay warnings."""

import json

import pytest

from pmalopti.cli import main
from pmalopti.pma.select import (
    checkpoints_from_paths,
    discover_checkpoints,
    phase_notes,
    select_checkpoints,
    stable_steps,
)
from pmalopti.pma.spike import checkpoints_before, until_before_spike

# The run: steps 100 ... 1000 without 700, with an extra 450.
STEPS = [100, 200, 300, 400, 450, 500, 600, 800, 900, 1000]


def make_run(root, steps=STEPS):
    for s in steps:
        d = root / f"checkpoint-{s}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": s}))
    return root


def steps_of(sel):
    return [c.step for c in sel.checkpoints]


@pytest.mark.parametrize("v", [100, 300])
def test_a_missing_checkpoint_in_the_window_is_refused_by_name(tmp_path, v):
    ckpts = discover_checkpoints(make_run(tmp_path))
    with pytest.raises(ValueError, match=r"--every-steps \S+: no checkpoint at steps 700 \("):
        select_checkpoints(ckpts, last=4, every_steps=v)


def test_exact_spacing_ignores_the_extra_checkpoint(tmp_path):
    ckpts = discover_checkpoints(make_run(tmp_path))
    sel = select_checkpoints(ckpts, last=4, every_steps=200)
    assert steps_of(sel) == [400, 600, 800, 1000] and sel.targets == [400, 600, 800, 1000]


def test_counting_folders_is_refused_when_they_are_unevenly_spaced(tmp_path):
    ckpts = discover_checkpoints(make_run(tmp_path))
    # Counting folders would merge 400, 500, 800, 1000 (the silent pick).
    with pytest.raises(ValueError, match=r"--every 2 counts folders, but .* not evenly spaced"):
        select_checkpoints(ckpts, last=4, every=2)


def test_nearest_takes_the_nearest_unused_checkpoint_and_says_so(tmp_path, capsys):
    run = make_run(tmp_path)
    sel = select_checkpoints(discover_checkpoints(run), last=4, every_steps=300, nearest=True)
    # 700 is missing: 600 and 800 are as near; the older one is taken.
    assert steps_of(sel) == [100, 400, 600, 1000] and sel.targets == [100, 400, 700, 1000]
    assert sel.notes == ["--nearest: step 700 is missing; took step 600"]
    argv = ["merge", "--run-dir", str(run), "--last", "4", "--every-steps", "300"]
    assert main([*argv, "--dry-run"]) == 2
    assert "no checkpoint at steps 700" in capsys.readouterr().err
    assert main([*argv, "--nearest", "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if "checkpoint-" in line]
    assert [(r[2], r[-2]) for r in rows if r[-1] == "(nearest)"] == [("600", "700")]
    assert [r[2] for r in rows] == ["100", "400", "600", "1000"]
    assert "target step" in out and "took step 600" in out


def test_explicit_inputs_out_of_order_are_merged_oldest_first_and_the_order_is_printed(
    tmp_path, capsys
):
    run = make_run(tmp_path, [90, 1000])
    given = [str(run / "checkpoint-1000"), str(run / "checkpoint-90")]
    assert main(["merge", *given, "--method", "wma", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "inputs ordered by step:" in out
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [(r[2], r[4]) for r in rows] == [("90", "0.3333"), ("1000", "0.6667")]


def test_inputs_of_unknown_step_are_refused_only_when_the_order_matters(tmp_path):
    files = [tmp_path / "b.safetensors", tmp_path / "a.safetensors"]
    with pytest.raises(ValueError, match=r"cannot tell the training step of .*b\.safetensors"):
        checkpoints_from_paths(files, order_sensitive=True)
    assert [c.path for c in checkpoints_from_paths(files, order_sensitive=False)] == files
    assert [c.path for c in checkpoints_from_paths(files, as_given=True)] == files


def test_until_includes_its_step_and_recover_stops_two_steps_before_the_spike(tmp_path, capsys):
    ckpts = discover_checkpoints(make_run(tmp_path))
    assert steps_of(select_checkpoints(ckpts, until=500, last=3)) == [400, 450, 500]
    # A spike logged at 500 was produced by the weights after 499 updates: <= 498 are before it.
    assert until_before_spike(500) == 498
    assert steps_of(checkpoints_before(ckpts, 500, 3)) == [300, 400, 450]
    assert steps_of(checkpoints_before(ckpts, 502, 3)) == [400, 450, 500]
    argv = ["merge", "--run-dir", str(tmp_path), "--before-spike", "500", "--last", "3"]
    assert main([*argv, "--dry-run"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "checkpoint-" in line]
    assert [r[2] for r in rows] == ["300", "400", "450"]


def test_windows_reaching_into_warmup_or_decay_are_warned_about(tmp_path):
    run = make_run(tmp_path)
    (run / "config.yaml").write_text(
        "schedule:\n  warmup_steps: 200\n  decay_steps: 100\ntrain:\n  steps: 1000\n"
    )
    assert stable_steps(run) == (200, 900)
    notes = phase_notes(discover_checkpoints(run), stable_steps(run))
    assert (
        "steps [100] are in the warmup" in notes[0]
        and "steps [1000] are in the LR decay" in notes[1]
    )
    assert (
        phase_notes(
            select_checkpoints(discover_checkpoints(run), until=900).checkpoints[1:], (200, 900)
        )
        == []
    )


def test_explicit_inputs_of_one_run_folder_get_the_same_warnings(tmp_path, capsys):
    run = make_run(tmp_path)
    (run / "config.yaml").write_text(
        "schedule:\n  warmup_steps: 200\n  decay_steps: 100\ntrain:\n  steps: 1000\n"
    )
    inputs = [str(run / "checkpoint-100"), str(run / "checkpoint-400")]
    assert main(["merge", *inputs, "--dry-run"]) == 0
    assert "note: steps [100] are in the warmup" in capsys.readouterr().out


def test_the_schedule_of_a_hugging_face_run_comes_from_its_logged_learning_rates(tmp_path):
    run = make_run(tmp_path, [100, 200, 300, 400])
    lrs = {10: 1e-4, 50: 5e-4, 100: 1e-3, 200: 1e-3, 300: 1e-3, 350: 5e-4, 400: 1e-4}
    history = [{"step": s, "learning_rate": lr} for s, lr in lrs.items()]
    (run / "checkpoint-400" / "trainer_state.json").write_text(
        json.dumps({"global_step": 400, "log_history": history})
    )
    assert stable_steps(run) == (100, 300)
