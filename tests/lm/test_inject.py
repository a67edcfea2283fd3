"""train.inject_spike: a loss spike on purpose, on exactly the named steps, resumable, and found
by `pmalopti recover`."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from test_pretrain import TINY, tiny_cfg

from pmalopti.cli import main
from pmalopti.config import ConfigError
from pmalopti.lm.inject import random_token_batch
from pmalopti.lm.loss import IGNORE
from pmalopti.lm.pretrain import pretrain
from pmalopti.pma.spike import spike_from_log
from pmalopti.runtime.checkpoint import list_checkpoints
from pmalopti.runtime.runlog import read_metrics

LR_SPIKE = (
    "train.inject_spike.step=4",
    "train.inject_spike.steps=2",
    "train.inject_spike.lr_factor=50",
)
NO_REPORT = "report.enabled=false"


def _same_weights(a, b) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.inject_spike.step=3", "train.inject_spike: step is 3 but nothing is injected"),
        ("train.inject_spike.lr_factor=0", "train.inject_spike.lr_factor must be > 0"),
        ("train.inject_spike.batch=zeros", "choose one of ['none', 'random_tokens']"),
        ("train.inject_spike.steps=0", "train.inject_spike.steps must be >= 1"),
    ],
)
def test_an_injection_that_does_nothing_or_is_out_of_range_is_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_cfg(override, "train.inject_spike.lr_factor=2" if "batch" in override else "seed=0")


def test_an_injection_after_the_last_step_is_refused_naming_both_fields():
    with pytest.raises(
        ConfigError, match=r"train: inject_spike.step 7 is after the last step \(steps 6\)"
    ):
        tiny_cfg("train.inject_spike.step=7", "train.inject_spike.lr_factor=10")


def test_an_lr_spike_changes_exactly_the_named_steps_and_is_logged(tiny_run, tmp_path):
    clean_run, _ = tiny_run
    run = tmp_path / "spiked"
    pretrain(tiny_cfg(NO_REPORT, *LR_SPIKE), run)
    clean, spiked = read_metrics(clean_run), read_metrics(run)
    assert [r["step"] for r in spiked] == list(range(1, 7))
    for a, b in zip(clean, spiked, strict=True):
        disturbed = b["step"] in (4, 5)
        assert b["lr"] == pytest.approx(a["lr"] * (50 if disturbed else 1), rel=1e-12)
        assert ("injected_lr_factor" in b) == disturbed and "injected_batch" not in b
    # A step's loss is measured before its update: steps 1-4 see clean weights.
    assert [r["loss"] for r in spiked[:4]] == [r["loss"] for r in clean[:4]]
    assert spiked[4]["loss"] != clean[4]["loss"]
    assert _same_weights(run / "checkpoint-2", clean_run / "checkpoint-2")
    assert not _same_weights(run / "checkpoint-4", clean_run / "checkpoint-4")


def test_a_random_token_batch_shows_at_its_own_step_and_keeps_the_lr(tiny_run, tmp_path):
    clean_run, _ = tiny_run
    run = tmp_path / "corrupt"
    pretrain(
        tiny_cfg(NO_REPORT, "train.inject_spike.step=4", "train.inject_spike.batch=random_tokens"),
        run,
    )
    clean, spiked = read_metrics(clean_run), read_metrics(run)
    assert [r["loss"] for r in spiked[:3]] == [r["loss"] for r in clean[:3]]
    assert spiked[3]["loss"] > clean[3]["loss"] and spiked[3]["injected_batch"] == "random_tokens"
    assert [r["lr"] for r in spiked] == [r["lr"] for r in clean]
    assert all("injected_batch" not in r for r in spiked[:3] + spiked[4:])


def test_random_tokens_keep_the_shape_the_padding_and_the_ignored_positions():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])  # (B, T)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    labels = torch.tensor([[IGNORE, 6, 7, IGNORE], [8, 9, IGNORE, IGNORE]])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    out = random_token_batch(batch, 300, step=4)
    assert torch.equal(out["attention_mask"], mask) and out["input_ids"].shape == ids.shape
    assert torch.equal(out["input_ids"][mask == 0], ids[mask == 0])
    assert torch.equal(out["labels"] == IGNORE, labels == IGNORE)
    kept = labels != IGNORE
    assert torch.equal(out["labels"][kept], out["input_ids"][kept])
    assert int((out["input_ids"] < 300).all()) and not torch.equal(out["input_ids"], ids)
    assert torch.equal(random_token_batch(batch, 300, step=4)["input_ids"], out["input_ids"])
    assert not torch.equal(random_token_batch(batch, 300, step=5)["input_ids"], out["input_ids"])


def test_resuming_inside_the_spike_window_reproduces_the_uninterrupted_run(tmp_path):
    over = (NO_REPORT, *LR_SPIKE, "train.inject_spike.batch=random_tokens")
    full = tmp_path / "full"
    pretrain(tiny_cfg(*over), full)
    cut = tmp_path / "cut"

    def interrupt(step, rec):
        if step == 4:  # the first of the two disturbed steps
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_cfg(*over), cut, hooks=(interrupt,))
    assert [s for s, _ in list_checkpoints(cut)] == [2, 4]
    assert main(["pretrain", "-o", str(cut), "--resume"]) == 0
    a, b = read_metrics(full), read_metrics(cut)
    keys = ("step", "loss", "grad_norm", "lr", "injected_lr_factor", "injected_batch")
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    assert _same_weights(full / "checkpoint-6", cut / "checkpoint-6")


RECOVER_TINY = [
    *TINY,
    "train.steps=10",
    "train.save_every=2",
    "train.eval_every=0",
    "schedule.decay_steps=0",
    NO_REPORT,
    "train.inject_spike.step=7",
    "train.inject_spike.lr_factor=1000",
]


def test_recover_finds_an_injected_lr_spike_merges_before_it_and_resumes_clean(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "-o", str(run), *[a for s in RECOVER_TINY for a in ("--set", s)]]) == 0
    # Update 7 uses LR x 1000; its damage shows in the loss of step 8.
    assert spike_from_log(run, factor=2.0).step == 8
    out = tmp_path / "merged"
    args = ["recover", "--run-dir", str(run), "--last", "2", "-o", str(out), "--resume"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "loss spike at step 8" in printed
        and "checkpoint-4" in printed
        and "checkpoint-6" in printed
    )
    resumed = read_metrics(tmp_path / "merged-resumed")
    original = read_metrics(run)
    assert [r["step"] for r in resumed] == [7, 8, 9, 10]
    assert all("injected_lr_factor" not in r for r in resumed)  # the spike is not replayed
    assert resumed[0]["lr"] == original[5]["lr"] == original[6]["lr"] / 1000
