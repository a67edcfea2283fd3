"""The GRPO trainer end to end: it learns, resumes exactly, and `pmalopti grpo` runs as documented."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest
import torch
import yaml

from pmalopti.cli import main
from pmalopti.config import load_config
from pmalopti.grpo.config import GRPOConfig
from pmalopti.grpo.trainer import GRPOTrainer
from pmalopti.models.tiny import tiny_model_and_tokenizer

CONFIG = Path(__file__).parents[2] / "configs" / "grpo_tiny.yaml"


class FirstCharTask:
    """Reward 1 when the response starts with a digit: learnable from the first token alone."""

    name = "first-char"

    def prompt(self, sample, *, chat=False, tokenizer=None):
        return sample["prompt"]

    def reward(self, response, sample):
        return 1.0 if response[:1].isdigit() else 0.0

    def is_correct(self, response, sample):
        return self.reward(response, sample) == 1.0

    def difficulty(self, sample):
        return sample["level"]


SAMPLES = [{"prompt": f"the knight {i} and", "level": i % 2} for i in range(16)]


def _tiny(seed: int = 0):
    model, tok = tiny_model_and_tokenizer(seed=seed, hidden_size=32, num_layers=2, num_heads=4)
    with torch.no_grad():  # a less uniform start, so π_old spreads over Lopti's two groups
        model.model.norm.weight.mul_(5.0)
    return model, tok


def _cfg(*overrides: str) -> GRPOConfig:
    base = [
        "rollout.prompts_per_step=4",
        "rollout.group_size=8",
        "rollout.max_new_tokens=1",
        "algo.minibatch_size=16",
        "algo.micro_batch_size=16",
        "optim.lr=1e-2",
        "train.steps=8",
        "train.progress=false",
        "train.sample_every=0",
        "train.eval_every=0",
    ]
    return load_config(GRPOConfig, None, [*base, *overrides])


@pytest.mark.parametrize(
    "variant",
    [[], ["algo.alpha=0.3"], ["algo.eta=0.5"], ["algo.alpha=0.3", "algo.eta=0.5"]],
    ids=["grpo", "ar", "lopti", "ar+lopti"],
)
def test_a_tiny_policy_raises_its_reward_on_a_trivially_learnable_task(variant):
    model, tok = _tiny()
    trainer = GRPOTrainer(_cfg(*variant), model, tok, FirstCharTask(), train_samples=SAMPLES)
    rewards = [r["reward/mean"] for r in trainer.train()]
    assert len(rewards) == 8
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.3, rewards


def _loss_keys(rec):
    return {k: v for k, v in rec.items() if not k.startswith(("time/", "throughput/"))}


def test_resuming_from_a_checkpoint_continues_exactly_like_an_uninterrupted_run(tmp_path):
    over = [
        "rollout.max_new_tokens=3",
        "rollout.temperature=0.8",
        "algo.kl_coef=0.05",
        "algo.shuffle=true",
        "algo.minibatch_size=8",
        "algo.micro_batch_size=4",
        "algo.eta=0.5",
        "algo.alpha=0.3",
        "train.steps=4",
        "train.save_every=2",
        "train.eval_every=2",
    ]

    def trainer(run_dir, *more):
        model, tok = _tiny()
        ref, _ = _tiny()
        return GRPOTrainer(
            _cfg(*over, *more),
            model,
            tok,
            FirstCharTask(),
            train_samples=SAMPLES,
            eval_samples=SAMPLES[:4],
            ref_model=ref.eval().requires_grad_(False),
            run_dir=run_dir,
        )

    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full_dir.mkdir(), part_dir.mkdir()
    full = trainer(full_dir)
    want = full.train()
    first = trainer(part_dir, "train.steps=2").train()
    assert [_loss_keys(r) for r in first] == [_loss_keys(r) for r in want[:2]]

    resumed = trainer(part_dir)
    resumed.resume(part_dir / "checkpoint-2")
    assert resumed.step == 2
    got = resumed.train()
    assert [_loss_keys(r) for r in got] == [_loss_keys(r) for r in want[2:]]
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    logged = [json.loads(x)["step"] for x in (part_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


CLI_SETTINGS = [
    "model.tiny.sft_steps=3",
    "model.tiny.hidden_size=32",
    "task.train_size=40",
    "task.eval_size=6",
    "rollout.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=3",
    "algo.minibatch_size=4",
    "algo.micro_batch_size=2",
    "algo.alpha=0.3",
    "algo.eta=0.5",
    "train.steps=2",
    "train.eval_every=1",
    "train.diag_every=1",
    "train.eval_at_start=false",
    "train.progress=false",
]


def _cli(out, *extra, resume=False):
    args = ["grpo", "--config", str(CONFIG), "--output-dir", str(out)]
    args += ["--resume"] if resume else []
    for s in [*CLI_SETTINGS, *extra]:
        args += ["--set", s]
    return main(args)


def test_the_grpo_command_writes_config_log_and_loadable_checkpoints(tmp_path, monkeypatch):
    import pmalopti.grpo.model as gm

    def no_reference(*a, **k):
        raise AssertionError("the reference model must not be built when kl_coef == 0")

    monkeypatch.setattr(gm, "load_reference", no_reference)
    out = tmp_path / "run"
    assert _cli(out, "train.report_to=tensorboard", "train.eval_at_start=true") == 0
    assert any((out / "tb").iterdir())
    saved = load_config(GRPOConfig, out / "config.yaml")
    assert saved.algo.eta == 0.5 and saved.rollout.group_size == 4
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2]
    assert set(recs[0]) == {"step"} | {k for k in recs[0] if k.startswith("eval/")}
    for key in (
        "reward/mean",
        "reward/std",
        "accuracy",
        "response_length/mean",
        "actor/pg_clipfrac",
        "actor/pg_clipfrac_lower",
        "actor/entropy",
        "lopti/low_token_share",
        "diag/token_share/p<0.25",
        "diag/grad_share/p<0.25",
        "time/rollout",
        "time/old_logprob",
        "time/update",
        "eval/accuracy",
        "eval/reward_mean",
        "eval/response_length",
    ):
        assert key in recs[-1], key
    assert recs[-1]["actor/optimizer_steps"] == 4  # 8 sequences / 4 per minibatch × 2 passes
    assert any(k.startswith("eval/accuracy/") for k in recs[-1])

    from transformers import AutoModelForCausalLM

    from pmalopti.runtime.hf import load_tokenizer

    ckpt = out / "checkpoint-2"
    AutoModelForCausalLM.from_pretrained(ckpt)
    load_tokenizer(ckpt)
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    assert state["step"] == 2 and "optimizer" in state
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2


def test_an_existing_run_is_refused_and_resume_needs_the_same_experiment(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(out) == 0
    assert _cli(out) == 2
    assert "--resume" in capsys.readouterr().err
    assert _cli(out, "train.steps=3", "algo.alpha=0.1", resume=True) == 2
    assert "differs from the run's saved config.yaml in ['algo']" in capsys.readouterr().err
    assert _cli(out, "train.steps=3", resume=True) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (out / "checkpoint-3").is_dir()


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need the main thread"
)
def test_ctrl_c_finishes_the_step_and_writes_a_resumable_checkpoint(tmp_path, monkeypatch):
    original = GRPOTrainer.train_step

    def step_then_interrupt(self):
        rec = original(self)
        if self.step == 1:
            signal.raise_signal(signal.SIGINT)
        return rec

    monkeypatch.setattr(GRPOTrainer, "train_step", step_then_interrupt)
    out = tmp_path / "run"
    assert _cli(out, "train.save_every=0") == 130
    assert (out / "checkpoint-1" / "training_state.pt").is_file()
    assert not (out / "checkpoint-2").exists()
    monkeypatch.setattr(GRPOTrainer, "train_step", original)
    assert _cli(out, resume=True) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 2
    assert (out / "checkpoint-2").is_dir()


def test_init_from_loads_the_given_weights_and_tokenizer(tmp_path):
    from pmalopti.grpo.model import load_policy

    model, tok = _tiny(seed=3)
    model.save_pretrained(tmp_path / "merged")
    tok.save_pretrained(tmp_path / "merged")
    cfg = load_config(GRPOConfig, None, [f"model.init_from={tmp_path / 'merged'}"])
    loaded, ltok, init = load_policy(cfg, None, torch.device("cpu"), tmp_path / "run")
    assert init == str(tmp_path / "merged") and len(ltok) == len(tok)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_saved_model_folder_trains_with_a_kl_reference_and_bf16_autocast(tmp_path):
    from pmalopti.models.tiny import build_tiny_model, build_tokenizer, tiny_config
    from pmalopti.tasks import get_task

    task = get_task("arithmetic", max_digits=2)
    texts = [task.prompt(s) + task.target(s) for s in task.samples("train", n=200)]
    tok = build_tokenizer(texts, vocab_size=320)
    cfg = tiny_config(len(tok), arch="qwen2", hidden_size=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    build_tiny_model(cfg).save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    out = tmp_path / "run"
    rc = _cli(
        out,
        f"model.path={tmp_path / 'qwen'}",
        "model.autocast=bfloat16",
        "algo.kl_coef=0.01",
        "train.steps=1",
    )
    assert rc == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "actor/kl" in rec and rec["actor/kl"] >= 0
    assert not (out / "init").exists()  # a real model is never copied into the run folder


def test_resume_is_exact_with_the_generate_engine_too(tmp_path):
    """`generate` samples from the global torch RNG, which the checkpoint also restores."""
    over = ["rollout.engine=hf", "rollout.max_new_tokens=3", "train.steps=2", "train.save_every=1"]

    def trainer(run_dir, *more):
        model, tok = _tiny()
        return GRPOTrainer(
            _cfg(*over, *more), model, tok, FirstCharTask(), train_samples=SAMPLES, run_dir=run_dir
        )

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    torch.manual_seed(123)
    want = trainer(tmp_path / "a").train()
    torch.manual_seed(123)
    trainer(tmp_path / "b", "train.steps=1").train()
    torch.manual_seed(999)  # whatever the RNG holds now, the checkpoint's state wins
    resumed = trainer(tmp_path / "b")
    resumed.resume(tmp_path / "b" / "checkpoint-1")
    got = resumed.train()
    assert [_loss_keys(r) for r in got] == [_loss_keys(r) for r in want[1:]]
