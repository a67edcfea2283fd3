"""pmalopti eval: loss/perplexity of checkpoints on a file, equal to the model's own loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pmalopti.cli import main
from pmalopti.lm.data import tokenize_blocks
from pmalopti.lm.evaluate import DEFAULT_MAX_LENGTH, block_length, evaluate_checkpoints

TEXTS = [f"{a} + {b} = {a + b}\nthe knight and the knave" for a in range(30) for b in (3, 17)]


@pytest.fixture(scope="module")
def two_checkpoints(tiny_lm, tmp_path_factory):
    model, tok = tiny_lm
    root = tmp_path_factory.mktemp("eval")
    paths = []
    for i in range(2):
        m = type(model)(model.config)
        m.load_state_dict(model.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.02 * i * torch.randn_like(p))
        m.save_pretrained(root / f"ckpt{i}")
        tok.save_pretrained(root / f"ckpt{i}")
        paths.append(root / f"ckpt{i}")
    data = root / "val.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return paths, data


def test_eval_loss_is_the_token_mean_cross_entropy_of_the_packed_blocks(two_checkpoints, tiny_lm):
    (ckpt, _), data = two_checkpoints
    model, tok = tiny_lm
    [row] = evaluate_checkpoints([ckpt], data, batch_size=3, max_length=32, device="cpu")
    blocks = tokenize_blocks(TEXTS, tok, 32)
    with torch.no_grad():
        ref = model(input_ids=blocks, labels=blocks).loss.item()  # one batch, HF's own loss
    assert row["loss"] == pytest.approx(ref, rel=1e-5)
    assert row["perplexity"] == pytest.approx(math.exp(ref), rel=1e-5)
    assert row["tokens"] == blocks.size(0) * 31


def test_eval_cli_prints_a_table_for_several_checkpoints_and_writes_json(
    two_checkpoints, tmp_path, capsys
):
    paths, data = two_checkpoints
    out = tmp_path / "res.json"
    args = ["eval", *map(str, paths), "--data", str(data), "--max-length", "32", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.startswith("| checkpoint | tokens | loss | perplexity |")
    rows = json.loads(out.read_text())
    assert [r["checkpoint"] for r in rows] == [str(p) for p in paths]
    assert rows[0]["loss"] != rows[1]["loss"]


def test_eval_refuses_missing_or_unreadable_inputs(two_checkpoints, tmp_path, capsys):
    paths, data = two_checkpoints
    assert main(["eval", str(tmp_path / "nope"), "--data", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["eval", str(paths[0]), "--data", str(bad)]) == 2
    assert "cannot read data file" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("hi")
    assert main(["eval", str(paths[0]), "--data", str(short), "--max-length", "64"]) == 2
    assert "not enough for one block" in capsys.readouterr().err


def test_eval_refuses_blocks_longer_than_the_model_context_and_defaults_to_it(
    two_checkpoints, tmp_path
):
    paths, data = two_checkpoints
    ctx = json.loads((paths[0] / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(ValueError, match=rf"--max-length {ctx + 1} is beyond the context"):
        evaluate_checkpoints([paths[0]], data, max_length=ctx + 1, max_blocks=1, device="cpu")
    assert block_length(paths, None) == min(ctx, DEFAULT_MAX_LENGTH)
    [row] = evaluate_checkpoints([paths[0]], data, max_length=32, max_blocks=1, device="cpu")
    assert row["max_length"] == 32


def test_eval_refuses_negative_max_blocks_and_a_json_output_that_is_an_input(
    two_checkpoints, capsys
):
    paths, data = two_checkpoints
    before = data.read_bytes()
    rc = main(["eval", str(paths[0]), "--data", str(data), "--max-blocks", "-1"])
    assert rc == 2 and "--max-blocks must be >= 0" in capsys.readouterr().err
    rc = main(["eval", str(paths[0]), "--data", str(data), "--json", str(data)])
    assert rc == 2 and "is an input; choose another file" in capsys.readouterr().err
    assert data.read_bytes() == before


def test_a_hugging_face_trainer_run_folder_stands_for_its_checkpoints(two_checkpoints, tmp_path):
    # HF Trainer writes checkpoint-<step>/ model folders without pmalopti's state file
    import shutil

    (a, b), data = two_checkpoints
    run = tmp_path / "hf_run"
    for step, src in ((10, a), (20, b)):
        shutil.copytree(src, run / f"checkpoint-{step}")
    rows = evaluate_checkpoints([run], data, batch_size=3, max_length=32, device="cpu")
    direct = evaluate_checkpoints([a, b], data, batch_size=3, max_length=32, device="cpu")
    assert [r["loss"] for r in rows] == [r["loss"] for r in direct]
