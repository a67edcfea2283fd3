"""The LM loop on the shared runtime: loud divergence, corrupt-checkpoint fallback, cleanup,
callbacks, and one checkpoint format."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from test_pretrain import TINY, tiny_cfg

from pmalopti.cli import main
from pmalopti.lm.loop import Callback
from pmalopti.lm.pretrain import pretrain
from pmalopti.runtime.checkpoint import list_checkpoints, load_state
from pmalopti.runtime.runlog import read_metrics


def _sets(*overrides: str) -> list[str]:
    return [a for s in (*TINY, *overrides) for a in ("--set", s)]


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    over = ("optim.lr=1e30", "optim.grad_clip=0", "train.save_every=1", "report.enabled=false")
    assert main(["pretrain", "-o", str(run), *_sets(*over)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training diverged at step 2" in err
    assert "checkpoint-1" in err
    assert [s for s, _ in list_checkpoints(run)] == [1]
    state = load_state(run / "checkpoint-1")
    assert state["step"] == 1
    assert [r["step"] for r in read_metrics(run)] == [1]  # the bad step is not logged


def test_non_finite_weights_are_never_saved(tmp_path):
    class Poison(Callback):
        def on_step_end(self, loop, record):
            if loop.step == 4:
                with torch.no_grad():
                    next(loop.model.parameters()).view(-1)[0] = float("nan")

    from pmalopti.runtime.stop import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"step 4: parameter .* is not finite"):
        pretrain(tiny_cfg("report.enabled=false"), tmp_path / "run", hooks=(Poison(),))
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]


def test_resume_skips_a_corrupt_newest_checkpoint_cleans_stale_tmp_and_stays_exact(
    tiny_run, tmp_path, caplog
):
    run, _ = tiny_run
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoint-6")
    weights = cut / "checkpoint-4" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # a write killed half-way
    (cut / _dead_writer_name(".tmp-checkpoint-6-")).mkdir()
    assert main(["pretrain", "-o", str(cut), "--resume"]) == 0
    assert "checkpoint-4 is unreadable" in caplog.text
    assert not (cut / _dead_writer_name(".tmp-checkpoint-6-")).exists()
    full, resumed = read_metrics(run), read_metrics(cut)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed, strict=True):
        assert (a["loss"], a["grad_norm"], a["tokens"]) == (b["loss"], b["grad_norm"], b["tokens"])


def test_callbacks_see_every_step_may_add_logged_keys_and_hear_of_each_save(tmp_path):
    seen, saved, ended = [], [], []

    class Probe(Callback):
        def on_step_end(self, loop, record):
            seen.append(loop.step)
            record["probe"] = loop.step * 10

        def on_save(self, loop, path):
            saved.append(path.name)

        def on_train_end(self, loop):
            ended.append(loop.step)

    plain = []
    pretrain(
        tiny_cfg("report.enabled=false"),
        tmp_path / "run",
        hooks=(Probe(), lambda step, rec: plain.append(step)),
    )
    assert seen == plain == list(range(1, 7)) and ended == [6]
    assert saved == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [r["probe"] for r in read_metrics(tmp_path / "run")] == [10 * s for s in range(1, 7)]


def test_pretrain_checkpoints_use_the_one_format(tiny_run):
    import json

    run, _ = tiny_run
    ckpt = run / "checkpoint-6"
    state = load_state(ckpt)
    assert {"optimizer", "rng", "step", "tokens"} <= set(state) and state["step"] == 6
    readable = json.loads((ckpt / "trainer_state.json").read_text())
    assert readable["global_step"] == 6 and readable["num_input_tokens_seen"] == state["tokens"]


def test_old_spellings_of_report_to_and_precision_are_accepted():
    from pmalopti.config import load_config
    from pmalopti.grpo.config import GRPOConfig

    cfg = tiny_cfg("train.tensorboard=true")
    assert cfg.train.report_to == "tensorboard" and cfg.train.tensorboard is False
    g = load_config(GRPOConfig, None, ["model.autocast=none", "train.tensorboard=true"])
    assert g.model.autocast == "float32" and g.train.report_to == "tensorboard"


def _dead_writer_name(prefix: str) -> str:
    """A temporary name as a writer on this host whose process has ended would have left."""
    from pmalopti.runtime._posix import temp_name

    host = temp_name(prefix)[len(prefix) :].rsplit("-", 2)[0]
    return f"{prefix}{host}-{2**22 + 4321}-deadbeef"


def test_training_runs_on_the_automatic_thread_count_and_restores_the_callers(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PMALOPTI_THREADS", "2")
    before = torch.get_num_threads()
    seen = []
    pretrain(
        tiny_cfg("report.enabled=false", "train.steps=2", "schedule.decay_steps=0"),
        tmp_path / "auto",
        hooks=(lambda step, rec: seen.append(torch.get_num_threads()),),
    )
    pretrain(
        tiny_cfg(
            "report.enabled=false", "train.steps=2", "schedule.decay_steps=0", "train.threads=1"
        ),
        tmp_path / "one",
        hooks=(lambda step, rec: seen.append(torch.get_num_threads()),),
    )
    assert seen == [2, 2, 1, 1] and torch.get_num_threads() == before
