"""The task rewards (K&K, math, arithmetic) plug into TRL's GRPOTrainer through `trl_reward`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset

from pmalopti.integrations.trl import LoptiGRPOConfig, LoptiGRPOTrainer
from pmalopti.models.tiny import tiny_model_and_tokenizer
from pmalopti.tasks import get_task, trl_reward

KK_DATA = Path("/work/shared/data/kk/3ppl_test.parquet")


def _kk():
    task = get_task("kk", path=KK_DATA) if KK_DATA.is_file() else get_task("kk", people=3)
    samples = task.samples("test", n=2)
    # Only what the reward reads travels as columns (TRL passes every column to the reward).
    rows = [{"names": list(s["names"]), "solution": list(s["solution"])} for s in samples]
    return task, rows, [task.prompt(s) for s in samples]


def _math(tmp_path):
    path = tmp_path / "math.jsonl"
    problems = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "2 * 3?", "answer": "6"}]
    path.write_text("\n".join(json.dumps(p) for p in problems), encoding="utf-8")
    task = get_task("math", path=path)
    rows = [{"answer": s["answer"]} for s in task.samples()]
    return task, rows, [task.prompt(s) for s in task.samples()]


def _arithmetic():
    task = get_task("arithmetic", max_digits=1)
    samples = task.samples("train", n=2)
    rows = [{k: s[k] for k in ("a", "b", "op")} for s in samples]
    return task, rows, [task.prompt(s) for s in samples]


@pytest.mark.parametrize("name", ["kk", "math", "arithmetic"])
def test_task_rewards_reach_trl_with_each_completions_own_sample(name, tmp_path):
    task, rows, prompts = {"kk": _kk, "math": lambda: _math(tmp_path), "arithmetic": _arithmetic}[
        name
    ]()
    ds = Dataset.from_list([{"prompt": p, **r} for p, r in zip(prompts, rows, strict=True)])
    model, tok = tiny_model_and_tokenizer(
        seed=0, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1
    )
    reward_fn = trl_reward(task)
    args = LoptiGRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        max_steps=1,
        ar_alpha=0.3,
        temperature=0.7,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = LoptiGRPOTrainer(
        model=model, processing_class=tok, reward_funcs=reward_fn, args=args, train_dataset=ds
    )
    trainer.train()
    logs = trainer._logs
    by_prompt = dict(zip(prompts, rows, strict=True))
    completions = list(logs["completion"])
    assert len(completions) == 4
    logged = list(logs["rewards"][reward_fn.__name__])
    # Each logged reward is the task's reward of that completion against its own prompt's sample.
    for prompt, completion, r in zip(logs["prompt"], completions, logged, strict=True):
        assert r == task.reward(completion, by_prompt[prompt])
    assert torch.isfinite(torch.tensor(logged)).all()
