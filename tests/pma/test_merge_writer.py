"""`write_hf_checkpoint`: the reusable writer (PMACallback saves its merges with it)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.safetensors_format import read_header
from pmalopti.pma.writer import write_hf_checkpoint
from pmalopti.runtime.fs import MARKER


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(10, 10, generator=g),
        "b": torch.randn(30, generator=g).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d": torch.tensor(3.5),
        "e": torch.zeros(0, 3),
        "f": torch.randn(4, 8, generator=g)[:, ::2],  # not contiguous
    }


def test_a_dict_round_trips_through_the_reference_reader_and_ours(tmp_path):
    src = tensors()
    out = write_hf_checkpoint(src, tmp_path / "m", metadata={"method": "sma"})
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,
        "model.safetensors",
        "pmalopti_merge.json",
    ]
    ref = load_file(out / "model.safetensors")
    with CheckpointReader(out) as r:
        for k, t in src.items():
            assert torch.equal(ref[k], t) and ref[k].dtype == t.dtype
            assert torch.equal(r.read(k), t)
    assert json.loads((out / "pmalopti_merge.json").read_text()) == {"method": "sma"}


def test_an_iterable_is_sharded_by_size_with_an_index(tmp_path):
    src = tensors()
    out = write_hf_checkpoint(iter(src.items()), tmp_path / "m", shard_size=100)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [
        f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)
    ]
    # In order, a new shard starts when the next tensor would pass 100 bytes; the 400-byte
    # tensor gets a shard of its own.
    shard_of = {k: files.index(f) for k, f in index["weight_map"].items()}
    assert shard_of == {"a": 0, "b": 1, "c": 2, "d": 2, "e": 2, "f": 3}
    for f in files:
        header, _ = read_header(out / f)
        assert sum(t.spec.nbytes for t in header.values()) <= 100 or len(header) == 1
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in src.values()
    )
    got = {}
    for f in files:
        got |= load_file(out / f)
    assert all(torch.equal(got[k], src[k]) for k in src)
    assert not list(tmp_path.glob(".tmp-*")) and not list(out.glob(".shard-*"))


def test_config_or_source_folder_files_make_a_loadable_model(tmp_path, tiny_lm):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_lm
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    a = write_hf_checkpoint(sd, tmp_path / "a", config=model.config)
    tok.save_pretrained(tmp_path / "src")
    model.config.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "optimizer.pt").write_bytes(b"x")
    b = write_hf_checkpoint(sd, tmp_path / "b", source_dir=tmp_path / "src")
    assert (b / "tokenizer.json").is_file() and not (b / "optimizer.pt").exists()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        want = model(ids).logits
        for folder in (a, b):
            torch.testing.assert_close(
                AutoModelForCausalLM.from_pretrained(folder)(ids).logits, want
            )


def test_bad_tensors_are_refused_and_nothing_is_left(tmp_path):
    with pytest.raises(ValueError, match="tensor 'a' given twice"):
        write_hf_checkpoint([("a", torch.zeros(2)), ("a", torch.ones(2))], tmp_path / "m")
    with pytest.raises(ValueError, match=r"'x' is a list, not a torch\.Tensor"):
        write_hf_checkpoint({"x": [1, 2]}, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_hf_checkpoint({"a": torch.zeros(2)}, tmp_path / "m")
    with pytest.raises(FileExistsError, match="not written by pmalopti"):
        write_hf_checkpoint({"a": torch.zeros(2)}, tmp_path / "m", force=True)
    write_hf_checkpoint({"a": torch.zeros(2)}, tmp_path / "m2")
    write_hf_checkpoint({"a": torch.ones(2)}, tmp_path / "m2", force=True)
    assert (tmp_path / "m2" / "model.safetensors").is_file()


def test_shards_are_flushed_to_disk_while_written_and_a_failed_flush_is_an_error(
    tmp_path, monkeypatch
):
    """Written data is handed to the disk every FLUSH_EVERY bytes in the background (so the
    final fsync finds little left); an error there (EIO, full disk) fails the write."""
    import errno
    import os

    from pmalopti.pma import writer

    monkeypatch.setattr(writer, "FLUSH_EVERY", 64)
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    out = write_hf_checkpoint(tensors(), tmp_path / "m")
    assert synced and torch.equal(load_file(out / "model.safetensors")["a"], tensors()["a"])

    def fail(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(OSError, match="Input/output error"):
        write_hf_checkpoint(tensors(), tmp_path / "n")
    assert not (tmp_path / "n").exists()
