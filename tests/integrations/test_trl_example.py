"""examples/trl_grpo_kk.py builds the paper's TRL configuration and K&K rows (not run here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from pmalopti.tasks import get_task, trl_reward

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl_grpo_kk.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("trl_grpo_kk", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_config_has_two_minibatches_per_sweep_and_the_paper_hyperparameters(
    example, tmp_path
):
    args = example.parse_args(["--output-dir", str(tmp_path)])
    cfg = example.build_config(args, num_processes=4)
    # 64 prompts × 8 rollouts = 512 responses; 256 per optimizer step; 8 per GPU forward on 4 GPUs.
    assert cfg.gradient_accumulation_steps * 8 * 4 == 256
    assert cfg.steps_per_generation * 8 * 4 == 512
    assert cfg.steps_per_generation // cfg.gradient_accumulation_steps == 2
    # Lopti's two sweeps: LoptiGRPOConfig sets TRL's replays (num_iterations) from lopti_eta
    assert (cfg.num_iterations, cfg.lopti_eta, cfg.ar_alpha) == (2, 0.5, 0.3)
    assert (cfg.epsilon, cfg.epsilon_high, cfg.beta, cfg.temperature) == (0.2, 0.24, 1e-3, 0.7)
    assert cfg.delta == 10.0  # the paper's dual clip c
    assert cfg.report_to == []  # --report-to none (the default)
    assert (cfg.learning_rate, cfg.loss_type, cfg.use_bias_correction_kl) == (1e-6, "dapo", False)


def test_example_without_lopti_runs_one_sweep(example, tmp_path):
    args = example.parse_args(["--output-dir", str(tmp_path), "--lopti-eta", "0"])
    cfg = example.build_config(args, num_processes=4)
    assert cfg.num_iterations == 1 and not cfg.lopti_enabled


def test_example_refuses_a_minibatch_that_does_not_divide_the_generation_batch(example, tmp_path):
    args = example.parse_args(["--output-dir", str(tmp_path), "--minibatch", "96"])
    with pytest.raises(ValueError, match="--minibatch"):
        example.build_config(args, num_processes=4)


def test_example_rows_carry_what_the_kk_reward_needs(example):
    task = get_task("kk", people=3, people_max=4)
    samples = task.samples("train", n=3, seed=1)
    ds = example.kk_dataset(task, samples, tokenizer=None)
    assert all(row["prompt"].endswith("<think>") for row in ds)
    reward = trl_reward(task)
    columns = {k: ds[k] for k in ("names", "solution")}
    assert reward([task.target(s) for s in samples], **columns) == [task.max_reward] * 3
    wrong = [
        task.target(s)
        .replace("knight", "kniXXX")
        .replace("knave", "knight")
        .replace("kniXXX", "knave")
        for s in samples
    ]
    assert all(r < task.max_reward for r in reward(wrong, **columns))


def test_example_runs_end_to_end_on_a_tiny_local_model(example, tmp_path):
    from pmalopti.models.tiny import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(
        seed=0, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1
    )
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    test_file = tmp_path / "kk_test.jsonl"
    from pmalopti.tasks.kk import generate_records, write_puzzles

    write_puzzles(generate_records(3, split="test", people=3), test_file)
    out = tmp_path / "run"
    # The paper's batch shape scaled down: 2 prompts × 4 rollouts, 2 minibatches per sweep.
    argv = "--train-n 8 --prompts-per-batch 2 --rollouts 4 --minibatch 4 --per-device-batch 2"
    argv += " --max-completion-length 8 --eval-n 2 --save-steps 2"
    paths = ["--model", str(tmp_path / "tiny"), "--output-dir", str(out)]
    example.main([*paths, "--eval-files", str(test_file), *argv.split(), "--max-steps", "4"])
    assert (out / "model.safetensors").is_file()
    accuracy = json.loads((out / "eval" / "accuracy.json").read_text())
    assert set(accuracy) == {"kk_test.jsonl"} and 0.0 <= accuracy["kk_test.jsonl"] <= 1.0
    lines = (out / "eval" / "kk_test.responses.jsonl").read_text().splitlines()
    assert len(lines) == 2

    # --resume continues from the newest checkpoint: its trainer state (marked here) is loaded
    state_file = out / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["global_step"] == 4
    state["log_history"][0]["resumed_from_here"] = 1
    state_file.write_text(json.dumps(state))
    example.main(
        [*paths, *argv.split(), "--max-steps", "6", "--resume", "--report-to", "tensorboard"]
    )
    final = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert final["global_step"] == 6 and final["log_history"][0].get("resumed_from_here") == 1
    assert [h["step"] for h in final["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert list((out / "runs").rglob("events.out.tfevents.*")), "tensorboard wrote no events"


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_example_reports_to_the_chosen_backend(example, tmp_path, backend):
    pytest.importorskip(backend)
    args = example.parse_args(["--output-dir", str(tmp_path), "--report-to", backend])
    assert example.build_config(args, num_processes=4).report_to == [backend]


def test_example_refuses_an_unknown_report_backend(example, tmp_path):
    with pytest.raises(SystemExit) as e:
        example.parse_args(["--output-dir", str(tmp_path), "--report-to", "mlflow"])
    assert e.value.code == 2


def test_example_resume_finds_the_newest_checkpoint_or_takes_a_path(example, tmp_path):
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    args = example.parse_args(["--output-dir", str(tmp_path), "--resume"])
    assert example.resume_checkpoint(args) == str(tmp_path / "checkpoint-10")
    args = example.parse_args(["--output-dir", "x", "--resume", str(tmp_path / "checkpoint-4")])
    assert example.resume_checkpoint(args) == str(tmp_path / "checkpoint-4")
    assert example.resume_checkpoint(example.parse_args(["--output-dir", str(tmp_path)])) is None


def test_example_resume_without_a_checkpoint_is_a_clear_error(example, tmp_path, capsys):
    for argv in (["--resume"], ["--resume", str(tmp_path / "nope")]):
        args = example.parse_args(["--output-dir", str(tmp_path / "empty"), *argv])
        with pytest.raises(SystemExit) as e:
            example.resume_checkpoint(args)
        assert e.value.code == 2
        assert "--resume" in capsys.readouterr().err
