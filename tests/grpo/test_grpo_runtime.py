"""The GRPO trainer on the shared runtime: one checkpoint format, loud divergence, corrupt-checkpoint
fallback on --resume, stale-tmp cleanup, and the supervised warm-up through `pmalopti sft`'s loop."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file
from test_grpo_trainer import SAMPLES, FirstCharTask, _cfg, _cli, _tiny

from pmalopti.config import load_config
from pmalopti.grpo.config import GRPOConfig
from pmalopti.grpo.trainer import GRPOTrainer
from pmalopti.runtime.checkpoint import list_checkpoints, load_state
from pmalopti.runtime.runlog import read_metrics
from pmalopti.runtime.stop import TrainingDiverged


def test_grpo_checkpoints_use_the_one_format_and_resume_from_it(tmp_path):
    out = tmp_path / "run"
    assert _cli(out, "train.save_every=1", "train.keep_checkpoints=0") == 0
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]
    state = load_state(out / "checkpoint-2")
    assert {"optimizer", "scheduler", "rng", "data", "step", "tokens"} <= set(state)
    readable = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert readable["global_step"] == 2 and readable["config"]["train"]["steps"] == 2
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_resume_falls_back_from_a_corrupt_newest_checkpoint_and_continues_exactly(tmp_path, caplog):
    out = tmp_path / "run"
    assert _cli(out, "train.save_every=1", "train.keep_checkpoints=0") == 0
    want = read_metrics(out)
    (out / "checkpoint-2" / "training_state.pt").write_bytes(b"\x00" * 10)  # killed mid-write
    (out / _dead_writer_name(".tmp-checkpoint-6-")).mkdir()
    assert _cli(out, "train.save_every=1", "train.keep_checkpoints=0", resume=True) == 0
    assert "checkpoint-2 is unreadable" in caplog.text
    assert not (out / _dead_writer_name(".tmp-checkpoint-6-")).exists()
    got = read_metrics(out)
    assert [r["step"] for r in got] == [1, 2]
    keys = ("reward/mean", "actor/loss", "actor/grad_norm", "eval/accuracy")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in want]


def test_a_diverging_grpo_run_stops_naming_the_step_and_saves_nothing_non_finite(tmp_path):
    over = ["optim.lr=1e30", "optim.max_grad_norm=null", "train.steps=6", "train.save_every=1"]
    model, tok = _tiny()
    trainer = GRPOTrainer(
        _cfg(*over), model, tok, FirstCharTask(), train_samples=SAMPLES, run_dir=tmp_path
    )
    with pytest.raises(TrainingDiverged, match=r"training diverged at step (\d+)") as exc:
        trainer.train()
    step = int(re.search(r"at step (\d+)", str(exc.value)).group(1))
    saved = [s for s, _ in list_checkpoints(tmp_path)]
    assert saved == list(range(1, step))[-2:]  # keep_checkpoints=2, none at or after the bad step
    for _, ckpt in list_checkpoints(tmp_path):
        weights = load_file(str(ckpt / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())
    assert all(r["step"] < step for r in read_metrics(tmp_path))


def test_the_tiny_models_warm_up_runs_the_sft_loop_and_lowers_the_target_loss():
    from pmalopti.grpo.model import build_tiny
    from pmalopti.lm.loss import evaluate_batches
    from pmalopti.lm.sft import collate, encode_pair
    from pmalopti.tasks import get_task

    task = get_task("arithmetic", max_digits=1)
    base = ["task.train_size=64", "model.tiny.hidden_size=32", "train.progress=false"]
    cold_cfg = load_config(GRPOConfig, None, base)
    warm_cfg = load_config(GRPOConfig, None, [*base, "model.tiny.sft_steps=30"])
    cold, tok = build_tiny(cold_cfg, task, torch.device("cpu"))
    warm, _ = build_tiny(warm_cfg, task, torch.device("cpu"))
    samples = task.samples("train", n=16, seed=0)
    batch = collate(
        [encode_pair(tok, task.prompt(s), task.target(s)) for s in samples], tok.pad_token_id
    )
    cpu = torch.device("cpu")
    assert evaluate_batches(warm, [batch], cpu) < evaluate_batches(cold, [batch], cpu) - 0.5


def test_old_grpo_runs_with_trainer_state_pt_and_log_jsonl_still_resume(tmp_path):
    out = tmp_path / "run"
    assert _cli(out) == 0
    ckpt = out / "checkpoint-2"
    os.replace(ckpt / "training_state.pt", ckpt / "trainer_state.pt")
    os.replace(out / "metrics.jsonl", out / "log.jsonl")
    assert _cli(out, "train.steps=3", resume=True) == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def _dead_writer_name(prefix: str) -> str:
    """A temporary name as a writer on this host whose process has ended would have left."""
    from pmalopti.runtime._posix import temp_name

    host = temp_name(prefix)[len(prefix) :].rsplit("-", 2)[0]
    return f"{prefix}{host}-{2**22 + 4321}-deadbeef"


def test_grpo_trains_on_the_automatic_thread_count(monkeypatch):
    monkeypatch.setenv("PMALOPTI_THREADS", "2")
    seen = []
    original = GRPOTrainer.train_step

    def spy(self):
        seen.append(torch.get_num_threads())
        return original(self)

    monkeypatch.setattr(GRPOTrainer, "train_step", spy)
    model, tok = _tiny()
    GRPOTrainer(_cfg("train.steps=1"), model, tok, FirstCharTask(), train_samples=SAMPLES).train()
    assert seen == [2]
