"""pmalopti sft: the loss covers target tokens only; a short run from a checkpoint works."""

from __future__ import annotations

import json

import pytest
import torch

from pmalopti.cli import main
from pmalopti.lm.loss import IGNORE, token_loss_sum
from pmalopti.lm.sft import collate, encode_pair
from pmalopti.runtime.checkpoint import list_checkpoints
from pmalopti.runtime.runlog import read_metrics


def test_prompt_tokens_are_masked_and_the_target_ends_with_eos(tiny_lm):
    _, tok = tiny_lm
    ids, labels = encode_pair(tok, "12 + 3 =", " 15")
    n_prompt = len(tok("12 + 3 =", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == " 15"


def test_collate_pads_on_the_right_without_targets_or_attention(tiny_lm):
    _, tok = tiny_lm
    batch = collate(
        [encode_pair(tok, "1 + 1 =", " 2"), encode_pair(tok, "10 + 17 =", " 27")], tok.pad_token_id
    )
    short = int(batch["attention_mask"][0].sum())
    assert (batch["input_ids"][0, short:] == tok.pad_token_id).all()
    assert (batch["labels"][0, short:] == IGNORE).all() and (
        batch["attention_mask"][0, short:] == 0
    ).all()


def test_the_sft_loss_ignores_the_prompt_and_matches_the_hugging_face_masked_loss(tiny_lm):
    model, tok = tiny_lm
    batch = collate(
        [encode_pair(tok, "3 + 4 =", " 7"), encode_pair(tok, "20 + 17 =", " 37")], tok.pad_token_id
    )
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s, n = token_loss_sum(logits, batch["labels"])
        hf = model(**batch).loss.item()
        # Changing the prompt's predicted-token logits alone leaves the loss unchanged.
        first_target = (batch["labels"] != IGNORE).float().argmax(dim=1)  # (B,)
        perturbed = logits.clone()
        for i, t in enumerate(first_target.tolist()):
            perturbed[i, : t - 1] += 5 * torch.randn_like(perturbed[i, : t - 1])
        s2, _ = token_loss_sum(perturbed, batch["labels"])
    assert float(s) / n == pytest.approx(hf, rel=1e-5)
    assert float(s2) == pytest.approx(float(s), rel=1e-6)
    assert n == sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in (" 7", " 37"))


@pytest.fixture(scope="module")
def init_ckpt(tiny_lm, tmp_path_factory):
    model, tok = tiny_lm
    path = tmp_path_factory.mktemp("sft") / "init"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_short_sft_run_from_a_checkpoint_trains_and_reports_accuracy(init_ckpt, tmp_path, capsys):
    run = tmp_path / "sft"
    args = ["sft", "-o", str(run), "--init-from", str(init_ckpt)]
    for s in [
        "train.steps=4",
        "train.batch_size=4",
        "train.save_every=2",
        "train.eval_every=2",
        "train.progress=false",
        "data.num_train=16",
        "data.num_val=4",
        "data.eval_generate=4",
        "schedule.warmup_steps=1",
        "data.max_length=48",
    ]:
        args += ["--set", s]
    assert main(args) == 0
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    final = json.loads((run / "eval.json").read_text())
    assert 0.0 <= final["accuracy"] <= 1.0 and final["eval_samples"] == 4
    rows = read_metrics(run / "metrics.jsonl")
    assert all(r["tokens"] > 0 for r in rows) and rows[0]["step"] == 1  # fresh optimizer, step 0


def test_sft_without_a_model_or_with_a_bad_file_is_refused(tmp_path, capsys):
    assert main(["sft", "-o", str(tmp_path / "r")]) == 2
    assert "--init-from" in capsys.readouterr().err
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n')
    assert main(["sft", "-o", str(tmp_path / "r"), "--init-from", str(tmp_path / "nope")]) == 2
    assert "not a Hugging Face model folder" in capsys.readouterr().err
