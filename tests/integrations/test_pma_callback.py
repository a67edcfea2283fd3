"""PMACallback in a real (tiny) `transformers.Trainer` run: merged folders, eval loss, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from pmalopti.integrations.hf_trainer import PMACallback
from pmalopti.models.tiny import build_tiny_model, build_tokenizer, load_tokenizer, tiny_config
from pmalopti.pma import merge_weights
from pmalopti.pma.online import window_steps

SCHEDULE = dict(method="wma", n=3, interval=2, every=4)  # merges at 4 (steps 0,2,4) and 8 (4,6,8)


@pytest.fixture(scope="module")
def setup():
    texts = [f"{a} + {b} = {a + b}" for a in range(40) for b in (2, 9)]
    tok = build_tokenizer(texts, vocab_size=300)
    cfg = tiny_config(
        len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, len(tok), (22, 12), generator=g)
    rows = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]
    return tok, cfg, rows[:16], rows[16:]  # 6 eval rows in batches of 4 and 2


class Recorder(TrainerCallback):
    """The live weights at every step (and at the start), to build the expected merge."""

    def __init__(self) -> None:
        self.snaps: dict[int, dict[str, torch.Tensor]] = {}

    def _take(self, state, model) -> None:
        self.snaps[state.global_step] = {k: p.detach().clone() for k, p in model.named_parameters()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._take(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._take(state, model)


def make_trainer(setup, out, callbacks, **overrides):
    tok, cfg, train, evalset = setup
    kwargs = dict(
        output_dir=str(out),
        max_steps=8,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        eval_strategy="steps",
        eval_steps=1000,  # only the evaluations PMACallback asks for at its merge points
        save_strategy="steps",
        save_steps=5,
        logging_steps=1000,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    args = TrainingArguments(**{**kwargs, **overrides})
    return Trainer(
        model=build_tiny_model(cfg, seed=0),
        args=args,
        train_dataset=train,
        eval_dataset=evalset,
        processing_class=tok,
        callbacks=callbacks,
    )


class LogSpy(TrainerCallback):
    """What a reporter (TensorBoard, W&B) receives."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append({**logs, "step": state.global_step})


@pytest.fixture(scope="module")
def run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rec, spy = Recorder(), LogSpy()
    trainer = make_trainer(setup, out, [rec, spy])
    # as TRL's callbacks take their trainer; the averager state goes into checkpoints (resume test)
    pma = PMACallback(**SCHEDULE, trainer=trainer, save_state=True)
    trainer.add_callback(pma)
    trainer.train()
    trainer.spy = spy
    return out, trainer, rec, pma


def test_the_callback_writes_a_loadable_folder_holding_the_average_of_the_live_weights(run, setup):
    out, _, rec, pma = run
    assert [p.name for p in pma.written] == ["pma-4", "pma-8"]
    ws = merge_weights("wma", 3)
    for merge_step in (4, 8):
        folder = out / f"pma-{merge_step}"
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        steps = window_steps(merge_step, 3, 2)
        for k, p in model.named_parameters():
            expected = sum(w * rec.snaps[s][k].double() for w, s in zip(ws, steps, strict=True))
            torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-6)
        meta = json.loads((folder / "pmalopti_merge.json").read_text())
        assert meta["steps"] == steps and meta["method"] == "wma"
        assert meta["weights"] == pytest.approx(ws)
    tok = load_tokenizer(out / "pma-8")
    assert tok("12 + 9 = 21")["input_ids"] == setup[0]("12 + 9 = 21")["input_ids"]


def test_the_merged_eval_loss_is_logged_beside_the_live_one_and_matches_trainer_evaluate(
    run, setup, tmp_path
):
    out, trainer, _, _ = run
    entries = {e["step"]: e for e in trainer.state.log_history if "eval_loss" in e}
    # step 4: asked for by the callback (eval_steps is 1000); step 8: the Trainer's final eval
    assert sorted(entries) == [4, 8]
    for step, e in entries.items():
        assert e["eval_pma_step"] == step
        assert e["eval_pma_loss"] != pytest.approx(e["eval_loss"], abs=1e-6)  # not the live model
    # reporters get it through trainer.log at the same step
    reported = {e["step"]: e["eval_pma_loss"] for e in trainer.spy.logs if "eval_pma_loss" in e}
    assert reported == {s: e["eval_pma_loss"] for s, e in entries.items()}
    # the same rule as the Trainer's own eval loss: evaluate the written folder with a Trainer
    merged = AutoModelForCausalLM.from_pretrained(out / "pma-8", dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True
    )
    reference = Trainer(model=merged, args=args, eval_dataset=setup[3]).evaluate()["eval_loss"]
    assert entries[8]["eval_pma_loss"] == pytest.approx(reference, rel=1e-5)


def test_a_run_resumed_mid_window_writes_the_same_merge(run, setup, tmp_path):
    out, *_ = run
    assert (out / "checkpoint-5" / "pma_online_state.pt").is_file()
    shutil.copytree(out / "checkpoint-5", tmp_path / "checkpoint-5")
    pma = PMACallback(**SCHEDULE, save_state=True)
    make_trainer(setup, tmp_path, [pma]).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-5")
    )
    assert [p.name for p in pma.written] == ["pma-8"]
    resumed = load_file(tmp_path / "pma-8" / "model.safetensors")
    uninterrupted = load_file(out / "pma-8" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for k, v in uninterrupted.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-6, atol=1e-7)


def test_by_default_checkpoints_hold_no_averager_state_and_a_resumed_run_restarts_its_windows(
    setup, tmp_path
):
    first = make_trainer(setup, tmp_path / "a", [PMACallback(**SCHEDULE)], eval_strategy="no")
    first.train()
    ckpt = tmp_path / "a" / "checkpoint-5"
    assert ckpt.is_dir() and not list(ckpt.glob("pma_online_state*"))
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoint-5")
    pma = PMACallback(**SCHEDULE)
    trainer = make_trainer(setup, tmp_path / "b", [pma], eval_strategy="no", max_steps=12)
    with pytest.warns(RuntimeWarning, match="skipped the merge at step 8"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-5"))
    # the window 4-6-8 began before the checkpoint: skipped; 8-10-12 is whole
    assert [p.name for p in pma.written] == ["pma-12"]


def test_dcp_format_writes_the_same_merge_as_the_hf_format(run, setup, tmp_path):
    import torch.distributed.checkpoint as dcp

    from pmalopti.cli import main

    out, *_ = run
    pma = PMACallback(**SCHEDULE, save_format="dcp", evaluate=False)
    make_trainer(setup, tmp_path, [pma], eval_strategy="no", save_strategy="no").train()
    assert [p.name for p in pma.written] == ["pma-4", "pma-8"]
    assert (tmp_path / "pma-8" / ".metadata").is_file()
    hf = load_file(out / "pma-8" / "model.safetensors")
    sd = {k: torch.empty_like(v) for k, v in hf.items()}
    dcp.load(sd, checkpoint_id=str(tmp_path / "pma-8"), no_dist=True)
    for k, v in hf.items():
        torch.testing.assert_close(sd[k], v, rtol=1e-6, atol=1e-7)
    # and offline, `pmalopti merge` of that one DCP folder gives the HF folder back
    conv = tmp_path / "pma-8-hf"
    assert main(["merge", str(tmp_path / "pma-8"), "--format", "hf", "-o", str(conv)]) == 0
    model = AutoModelForCausalLM.from_pretrained(conv, dtype=torch.float32)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), hf[k], rtol=1e-6, atol=1e-7)


def test_existing_merged_folders_stop_the_run_before_training_not_at_the_first_merge(
    setup, tmp_path
):
    (tmp_path / "pma-4").mkdir()
    trainer = make_trainer(setup, tmp_path, [PMACallback(**SCHEDULE)])
    with pytest.raises(FileExistsError, match="pma-4"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_eval_batches_without_a_loss_skip_the_merged_eval_but_not_the_merges(setup, tmp_path):
    # e.g. a GRPO trainer's prompt-only eval set: warn once, keep training and writing merges
    tok, cfg, train, evalset = setup
    no_labels = [{k: v for k, v in row.items() if k != "labels"} for row in evalset]
    pma = PMACallback(**SCHEDULE)
    trainer = make_trainer(
        (tok, cfg, train, no_labels), tmp_path, [pma], save_strategy="no", max_steps=12
    )
    trainer.train()
    assert [p.name for p in pma.written] == ["pma-4", "pma-8", "pma-12"]
    assert not any("eval_pma_loss" in e for e in trainer.state.log_history)
    # after the first refusal (step 4) it stops asking for evaluations at merge points; the
    # Trainer still evaluates at the end of training by itself
    evals = [e["step"] for e in trainer.state.log_history if "eval_runtime" in e]
    assert evals == [4, 12]


def test_a_bad_schedule_is_refused_when_the_callback_is_built():
    with pytest.raises(ValueError, match=r"^alpha:"):
        PMACallback(method="ema", n=4)


@pytest.mark.slow
def test_the_callback_works_unchanged_in_trl_sft_trainer(setup, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    tok, cfg, _, _ = setup
    data = datasets.Dataset.from_dict({"text": [f"{a} + 2 = {a + 2}" for a in range(32)]})
    pma = PMACallback(method="sma", n=2, interval=2, every=4)
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=8,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        eval_strategy="steps",
        eval_steps=1000,
        disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(
        model=build_tiny_model(cfg, seed=0),
        args=args,
        train_dataset=data,
        eval_dataset=data.select(range(8)),
        processing_class=tok,
        callbacks=[pma],
    )
    trainer.train()
    assert [p.name for p in pma.written] == ["pma-4", "pma-8"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "pma-8")
    assert any("eval_pma_loss" in e for e in trainer.state.log_history)
