"""Checkpoints never lead a read outside themselves, and a corrupt header fails cheaply in one line."""

from __future__ import annotations

import json
import struct
import time

import pytest
import torch
from safetensors.torch import save_file

from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.safetensors_format import SafetensorsError, read_header
from pmalopti.pma.writer import copy_model_files
from pmalopti.runtime.inputs import file_inside, is_inside

SECRET = b"SECRET!!the first 8 bytes must never be printed"


@pytest.fixture
def folder(tmp_path):
    """A one-tensor model folder and a secret file beside it."""
    m = tmp_path / "m"
    m.mkdir()
    save_file({"w": torch.ones(2, 2)}, str(m / "model.safetensors"))
    (m / "config.json").write_text("{}")
    (tmp_path / "secret.bin").write_bytes(SECRET)
    return m


def _raw(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@pytest.mark.parametrize("name", ["/etc/passwd", "../secret.bin", "a/../../secret.bin", ""])
def test_an_index_naming_a_file_outside_the_folder_is_refused_without_reading_it(folder, name):
    (folder / "model.safetensors").rename(folder / "s.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": name}}))
    with pytest.raises(ValueError, match="not a plain name inside the folder") as err:
        CheckpointReader(folder)
    leaked = str(struct.unpack("<Q", SECRET[:8])[0])
    assert "SECRET" not in str(err.value) and leaked not in str(err.value)


def test_a_shard_symlinked_out_of_the_folder_is_refused(folder):
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(folder.parent / "secret.bin")
    with pytest.raises(ValueError, match="symlink that leaves"):
        CheckpointReader(folder)


def test_a_symlink_inside_the_folder_and_the_hub_cache_layout_are_accepted(tmp_path):
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    save_file({"w": torch.ones(3)}, str(repo / "blobs" / "f00d"))
    (snap / "model.safetensors").symlink_to("../../blobs/f00d")
    with CheckpointReader(snap) as r:
        assert torch.equal(r.read("w"), torch.ones(3))
    (snap / "other.json").symlink_to(tmp_path / "elsewhere.json")
    assert not is_inside(snap, snap / "other.json")
    assert file_inside(snap, "model.safetensors") == snap / "model.safetensors"


def test_a_tokenizer_file_symlinked_outside_is_not_copied_into_a_merge(folder, tmp_path):
    (folder / "tokenizer_config.json").symlink_to(folder.parent / "secret.bin")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: model file is a symlink"):
        copy_model_files(folder, out)
    assert not (out / "tokenizer_config.json").exists()


def test_a_header_length_larger_than_the_file_never_prints_the_bytes(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(SECRET)
    with pytest.raises(SafetensorsError) as err:
        read_header(f)
    assert str(struct.unpack("<Q", SECRET[:8])[0]) not in str(err.value)
    assert "header length field is larger" in str(err.value)


def test_a_huge_header_of_empty_tensors_is_refused_before_it_is_parsed(tmp_path):
    empty = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    f = tmp_path / "bomb.safetensors"
    f.write_bytes(_raw({f"t{i}": empty for i in range(100_000)}))  # ~6 MB of header, no data
    start = time.perf_counter()
    with pytest.raises(
        SafetensorsError, match=r"refusing a \d+-byte safetensors header for 0 bytes"
    ):
        read_header(f)
    assert time.perf_counter() - start < 1.0  # nothing parsed


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}, "malformed shape"),
        ({"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}, "malformed shape"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "malformed shape"),
        (
            {"dtype": "F32", "shape": [1], "data_offsets": [2**64, 2**64 + 4]},
            "malformed data_offsets",
        ),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "malformed data_offsets"),
        ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "unsupported or missing dtype"),
        ([1, 2], "not an object"),
    ],
)
def test_each_header_entry_is_checked_field_by_field_with_one_clear_line(tmp_path, entry, message):
    f = tmp_path / "x.safetensors"
    f.write_bytes(_raw({"w": entry}, b"\0" * 4))
    with pytest.raises(SafetensorsError, match=message) as err:
        read_header(f)
    assert "\n" not in str(err.value) and "Overflow" not in str(err.value)


def test_a_malicious_pickle_is_refused_without_running_and_without_quoting_it(tmp_path):
    import os
    import pickle

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    m = tmp_path / "m"
    m.mkdir()
    (m / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="weights_only=True") as err:
        CheckpointReader(m)
    assert not marker.exists() and "system" not in str(err.value)
