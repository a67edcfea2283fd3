"""The one checkpoint format: round trip, durability helpers, corrupt-checkpoint fallback, cleanup."""

from __future__ import annotations

import json
import logging
import os
import random

import pytest
import torch

from pmalopti.models.tiny import tiny_model_and_tokenizer
from pmalopti.runtime._posix import temp_name
from pmalopti.runtime.checkpoint import (
    CHECKPOINT_DIR,
    STATE_FILE,
    CorruptCheckpoint,
    checkpoint_step,
    list_checkpoints,
    load_state,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_checkpoint,
)
from pmalopti.runtime.fs import current_umask
from pmalopti.runtime.hf import load_weights


def dead_writer_name(prefix: str) -> str:
    """A temporary name as a writer on this host whose process has ended would have left."""
    host_pid = temp_name(prefix)[len(prefix) :].rsplit("-", 2)[0]
    return f"{prefix}{host_pid}-{2**22 + 4321}-deadbeef"


@pytest.fixture(scope="module")
def small():
    return tiny_model_and_tokenizer(seed=1, hidden_size=32, num_layers=1, num_heads=2)


def _save(run, step, model, tok, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_checkpoint(run, step, model, tok, {"optimizer": opt.state_dict()}, **kw)


def test_a_checkpoint_round_trips_weights_state_and_readable_steps(small, tmp_path):
    model, tok = small
    g = torch.Generator().manual_seed(5)
    state = {"optimizer": {"state": {}, "param_groups": []}, "rng": rng_state({"g": g})}
    path = save_checkpoint(
        tmp_path, 7, model, tok, state, tokens=700, log_entry={"loss": 1.5}, info={"note": "x"}
    )
    assert path == tmp_path / "checkpoint-7"
    assert list_checkpoints(tmp_path) == [(7, path)]
    loaded = load_state(path)
    assert loaded["step"] == 7 and loaded["tokens"] == 700
    readable = json.loads((path / "trainer_state.json").read_text())
    assert readable == {
        "global_step": 7,
        "num_input_tokens_seen": 700,
        "log_history": [{"loss": 1.5}],
        "note": "x",
    }
    other, _ = tiny_model_and_tokenizer(seed=2, hidden_size=32, num_layers=1, num_heads=2)
    load_weights(other, path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    verify_checkpoint(path)


def test_checkpoint_files_follow_the_umask_not_transformers_0600(small, tmp_path):
    model, tok = small
    path = _save(tmp_path, 1, model, tok)
    want = 0o666 & ~current_umask()
    for f in path.iterdir():
        assert f.stat().st_mode & 0o777 == want, f.name
    assert path.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_keep_leaves_only_the_newest_checkpoints(small, tmp_path):
    model, tok = small
    for step in (1, 2, 3):
        _save(tmp_path, step, model, tok, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_rng_state_restores_torch_python_and_named_generators():
    g = torch.Generator().manual_seed(3)
    saved = rng_state({"g": g})
    want = (torch.rand(3), random.random(), torch.rand(2, generator=g))
    torch.manual_seed(99), random.seed(99), g.manual_seed(99)
    set_rng_state(saved, {"g": g})
    got = (torch.rand(3), random.random(), torch.rand(2, generator=g))
    assert torch.equal(got[0], want[0]) and got[1] == want[1] and torch.equal(got[2], want[2])


def test_folder_names_of_ours_and_olmo_give_their_step():
    assert checkpoint_step("checkpoint-12") == 12 and checkpoint_step("step40") == 40
    assert checkpoint_step("iter_0000012") == 12 and checkpoint_step("step-7") == 7
    assert checkpoint_step("checkpoint-") is None and checkpoint_step("ckpt-3") is None
    assert CHECKPOINT_DIR.match("checkpoint-3")


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-state", "empty-config"])
def test_resume_falls_back_from_a_corrupt_newest_checkpoint_with_a_warning(
    small, tmp_path, caplog, damage
):
    model, tok = small
    _save(tmp_path, 1, model, tok)
    newest = _save(tmp_path, 2, model, tok)
    if damage == "truncate-weights":
        f = newest / "model.safetensors"
        os.truncate(f, f.stat().st_size - 100)
    elif damage == "garbage-state":
        (newest / STATE_FILE).write_bytes(b"PK\x03\x04 not a zip")
    else:
        (newest / "config.json").write_text("")
    with pytest.raises(CorruptCheckpoint):
        verify_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    assert "checkpoint-2 is unreadable" in caplog.text and "falling back" in caplog.text


def test_resume_says_why_when_no_checkpoint_is_usable(small, tmp_path):
    model, tok = small
    with pytest.raises(FileNotFoundError, match="no checkpoint-\\* folder"):
        resume_checkpoint(tmp_path, required=True)
    ckpt = _save(tmp_path, 1, model, tok)
    (ckpt / STATE_FILE).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="every checkpoint-\\* folder is unreadable"):
        resume_checkpoint(tmp_path, required=True)
    assert resume_checkpoint(tmp_path) is None


def test_the_leftovers_of_a_killed_checkpoint_write_go_at_the_next_save(small, tmp_path):
    model, tok = small
    stale = tmp_path / dead_writer_name(".tmp-checkpoint-4-")
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = tmp_path / temp_name(".tmp-checkpoint-9-")  # this (live) process's: left alone
    live.mkdir()
    _save(tmp_path, 5, model, tok)
    assert not stale.exists() and live.is_dir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]


def test_a_folder_without_its_state_file_is_not_listed(small, tmp_path):
    model, tok = small
    path = _save(tmp_path, 3, model, tok)
    (path / STATE_FILE).unlink()
    assert list_checkpoints(tmp_path) == []
