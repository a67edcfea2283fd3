"""The streaming merge equals an in-memory reference; bad inputs fail early and leave nothing.

Inputs are written with `safetensors.torch.save_file` (the reference implementation), sharded
differently per checkpoint, and merged with tiny pieces so that every tensor crosses piece
boundaries.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pmalopti.errors import UserError
from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.streaming import merge_checkpoints
from pmalopti.pma.weights import merge_weights, normalize_weights
from pmalopti.pma.writer import ShardWriter
from pmalopti.runtime.fs import MARKER, write_marker

SHAPES = {
    "embed.weight": (37, 16),
    "layers.0.attn.weight": (16, 16),
    "layers.0.norm.weight": (16,),
    "layers.1.mlp.weight": (48, 16),
    "scale": (),
    "empty": (0, 4),
}


def random_state(seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * scale).to(dtype) for k, s in SHAPES.items()}


def save_ckpt(folder: Path, tensors: dict, *, shards: int = 1, config: dict | None = None):
    """A HF-style folder: `model.safetensors`, or `shards` files plus an index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
    else:
        wmap = {}
        for i in range(shards):
            part = {n: tensors[n] for n in names[i::shards]}
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, folder / fname)
            wmap |= dict.fromkeys(part, fname)
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": wmap})
        )
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **(config or {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def make_ckpts(root, n=3, dtype=torch.float32, **kw):
    states = [random_state(i, dtype) for i in range(n)]
    paths = [save_ckpt(root / f"ck{i}", s, shards=i + 1, **kw) for i, s in enumerate(states)]
    return paths, states


def read_all(folder) -> dict[str, torch.Tensor]:
    with CheckpointReader(folder) as r:
        return {n: r.read(n) for n in r.specs}


def reference(states, weights) -> dict[str, torch.Tensor]:
    """sum_i w_i M_i in float64."""
    return {
        k: sum(w * s[k].double() for w, s in zip(weights, states, strict=True)) for k in states[0]
    }


def assert_rounded_from(out: torch.Tensor, ref: torch.Tensor):
    """`out` is `ref` rounded to out's dtype: within one unit in the last place (plus the float32
    accumulation error where the sum cancels to nearly zero)."""
    mant = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24}[out.dtype]
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-30))) - (mant - 1))
    err = (out.double() - ref).abs()
    assert bool((err <= ulp + 1e-6).all()), f"max error {float(err.max())}"


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()


# --- equivalence with the in-memory reference -------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("method", ["sma", "ema", "wma", "explicit"])
def test_streamed_merge_equals_the_in_memory_reference(tmp_path, method, dtype):
    paths, states = make_ckpts(tmp_path, 3, dtype)
    weights = (
        normalize_weights([3, -1, 2]) if method == "explicit" else merge_weights(method, 3, 0.3)
    )
    out = merge_checkpoints(paths, weights, tmp_path / "out", progress=False, chunk_bytes=64)
    merged, ref = read_all(out), reference(states, weights)
    assert set(merged) == set(ref)
    for k in ref:
        assert merged[k].dtype == dtype and merged[k].shape == ref[k].shape
        assert_rounded_from(merged[k], ref[k])


def test_weights_are_normalised_and_the_order_is_oldest_first(tmp_path):
    paths, states = make_ckpts(tmp_path, 2)
    out = merge_checkpoints(paths, [1, 3], tmp_path / "out", progress=False)
    merged, ref = read_all(out), reference(states, [0.25, 0.75])
    for k in ref:
        assert_rounded_from(merged[k], ref[k])


def test_sma_of_one_checkpoint_and_ema_with_alpha_one_reproduce_the_input(tmp_path):
    paths, states = make_ckpts(tmp_path, 3, torch.bfloat16)
    one = read_all(merge_checkpoints(paths[:1], [1.0], tmp_path / "one", progress=False))
    newest = read_all(
        merge_checkpoints(paths, merge_weights("ema", 3, 1.0), tmp_path / "ema", progress=False)
    )
    for k in states[0]:
        assert torch.equal(one[k], states[0][k])
        assert torch.equal(newest[k], states[2][k])


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
    ],
)
def test_dtype_casts_floating_tensors_and_is_recorded_in_the_config(tmp_path, src, dst):
    paths, states = make_ckpts(tmp_path, 2, src)
    out = merge_checkpoints(paths, [0.5, 0.5], tmp_path / "out", dtype=dst, progress=False)
    merged, ref = read_all(out), reference(states, [0.5, 0.5])
    for k in ref:
        assert merged[k].dtype == dst
        assert_rounded_from(merged[k], ref[k])
    assert json.loads((out / "config.json").read_text())["dtype"] == str(dst).split(".")[1]


def test_integer_and_bool_buffers_are_copied_from_the_newest_not_averaged(tmp_path):
    states = [random_state(i) for i in range(3)]
    for s in states:
        s["step"] = torch.tensor([7, 11], dtype=torch.int64)
        s["mask"] = torch.tensor([True, False, True])
    paths = [save_ckpt(tmp_path / f"ck{i}", s, shards=2) for i, s in enumerate(states)]
    merged = read_all(merge_checkpoints(paths, [1, 1, 1], tmp_path / "out", progress=False))
    assert torch.equal(merged["step"], states[-1]["step"]) and merged["step"].dtype == torch.int64
    assert torch.equal(merged["mask"], states[-1]["mask"])


def test_single_safetensors_files_and_bin_files_merge_like_folders(tmp_path):
    paths, states = make_ckpts(tmp_path, 3)
    save_file(states[0], tmp_path / "a.safetensors")
    torch.save(states[1], tmp_path / "pytorch_model.bin")
    (tmp_path / "binck").mkdir()
    torch.save(states[1], tmp_path / "binck" / "pytorch_model.bin")
    w = [0.2, 0.3, 0.5]
    a = read_all(merge_checkpoints(paths, w, tmp_path / "a", progress=False))
    inputs = [tmp_path / "a.safetensors", tmp_path / "binck", paths[2]]
    b = read_all(merge_checkpoints(inputs, w, tmp_path / "b", progress=False, chunk_bytes=64))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Sharded .bin with a pytorch_model.bin.index.json, read one file at a time.
    (tmp_path / "binsharded").mkdir()
    names = list(states[1])
    wmap = {}
    for i, part in enumerate((names[:3], names[3:])):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({n: states[1][n] for n in part}, tmp_path / "binsharded" / fname)
        wmap |= dict.fromkeys(part, fname)
    (tmp_path / "binsharded" / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": wmap})
    )
    inputs[1] = tmp_path / "binsharded"
    c = read_all(merge_checkpoints(inputs, w, tmp_path / "c", progress=False, chunk_bytes=64))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_output_is_sharded_with_an_index_and_copies_config_and_tokenizer(tmp_path):
    paths, states = make_ckpts(tmp_path, 2)
    out = merge_checkpoints(paths, [1, 1], tmp_path / "out", shard_size=3000, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    loaded = {}
    for f in files:
        part = load_file(out / f)  # the reference reader accepts our files
        assert all(index["weight_map"][k] == f for k in part)
        loaded |= part
    ref = reference(states, [0.5, 0.5])
    assert set(loaded) == set(ref)
    for k in ref:
        assert_rounded_from(loaded[k], ref[k])
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in loaded.values())
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    meta = json.loads((out / "pmalopti_merge.json").read_text())
    assert [i["weight"] for i in meta["inputs"]] == [0.5, 0.5]
    assert [Path(i["path"]) for i in meta["inputs"]] == [p.resolve() for p in paths]


def test_merged_tiny_llama_loads_with_from_pretrained_and_gives_the_reference_logits(
    tmp_path, tiny_lm
):
    from transformers import AutoModelForCausalLM

    from pmalopti.models.tiny import build_tiny_model

    model, tok = tiny_lm
    assert model.config.tie_word_embeddings
    models = [build_tiny_model(model.config, seed=s) for s in range(3)]
    paths = []
    for i, m in enumerate(models):
        m.save_pretrained(tmp_path / f"ck{i}", max_shard_size="300KB")
        tok.save_pretrained(tmp_path / f"ck{i}")
        paths.append(tmp_path / f"ck{i}")
    weights = merge_weights("wma", 3)
    out = merge_checkpoints(paths, weights, tmp_path / "out", progress=False)

    # A tied lm_head is absent from the inputs, so it stays absent from the output.
    assert "lm_head.weight" not in read_all(out)
    sds = [m.state_dict() for m in models]
    ref_model = build_tiny_model(model.config, seed=0)
    ref_model.load_state_dict(
        {k: sum(w * sd[k] for w, sd in zip(weights, sds, strict=True)) for k in sds[0]}
    )
    merged = AutoModelForCausalLM.from_pretrained(out)
    ids = tok(["12 + 3 = 15", "the knight"], return_tensors="pt", padding=True)
    with torch.no_grad():
        got = merged(**ids).logits
        want = ref_model(**ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()


# --- bad input: a clear error, nothing written, inputs untouched -----------------------------


def corrupt_truncate(path: Path):
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])


def corrupt_header(path: Path):
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json!!!!"
    f.write_bytes(bytes(data))


def drop_tensor(path: Path):
    s = random_state(0)
    del s["layers.0.norm.weight"]
    (path / "model.safetensors").unlink()
    save_file(s, path / "model.safetensors")


def reshape_tensor(path: Path):
    s = random_state(0)
    s["embed.weight"] = torch.zeros(38, 16)
    save_file(s, path / "model.safetensors")


def retype_tensor(path: Path):
    s = random_state(0)
    s["embed.weight"] = s["embed.weight"].to(torch.int32)  # a floating dtype alone would merge
    save_file(s, path / "model.safetensors")


def other_architecture(path: Path):
    (path / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
    )


def remove_weights(path: Path):
    (path / "model.safetensors").unlink()


def infinite_value(path: Path):
    s = random_state(0)
    s["layers.1.mlp.weight"][3, 3] = float("inf")
    save_file(s, path / "model.safetensors")


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (corrupt_truncate, ValueError, r"ck0.*model.safetensors: truncated: tensor"),
        (corrupt_header, ValueError, r"ck0.*corrupt"),
        (drop_tensor, ValueError, r"ck0 lacks tensor 'layers.0.norm.weight'"),
        (
            reshape_tensor,
            ValueError,
            r"tensor 'embed.weight': shape \[38, 16\] in checkpoint .*ck0",
        ),
        (
            retype_tensor,
            ValueError,
            r"tensor 'embed.weight': dtype int32 in checkpoint .*ck0",
        ),
        (other_architecture, ValueError, r"ck0 is a qwen2 Qwen2ForCausalLM, but .* llama"),
        (remove_weights, FileNotFoundError, r"ck0: no model.safetensors"),
        (infinite_value, ValueError, r"merged tensor 'layers.1.mlp.weight' has 1 non-finite"),
    ],
)
def test_a_damaged_input_names_the_checkpoint_and_tensor_and_writes_nothing(
    tmp_path, damage, error, message
):
    paths, _ = make_ckpts(tmp_path / "in", 3)
    damage(paths[0])
    before = tree_digest(tmp_path / "in")
    with pytest.raises(error, match=message):
        merge_checkpoints(paths, [1, 1, 1], tmp_path / "out", progress=False, chunk_bytes=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no temp folder
    assert tree_digest(tmp_path / "in") == before


def test_an_extra_tensor_in_an_older_checkpoint_is_refused(tmp_path):
    paths, _ = make_ckpts(tmp_path, 2)
    s = random_state(0) | {"lm_head.weight": torch.zeros(2, 2)}
    save_file(s, paths[0] / "model.safetensors")
    with pytest.raises(ValueError, match=r"ck0 has tensor 'lm_head\.weight' that the newest"):
        merge_checkpoints(paths, [1, 1], tmp_path / "out", progress=False)


def test_a_missing_input_or_shard_is_reported(tmp_path):
    paths, _ = make_ckpts(tmp_path, 3)
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        merge_checkpoints([*paths, tmp_path / "nope"], [1] * 4, tmp_path / "out", progress=False)
    (paths[2] / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"shard model-00002-of-00003\.safetensors .* missing"
    ):
        merge_checkpoints(paths, [1] * 3, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_differing_integer_buffers_are_refused(tmp_path):
    states = [random_state(i) | {"step": torch.tensor([i])} for i in range(2)]
    paths = [save_ckpt(tmp_path / f"ck{i}", s) for i, s in enumerate(states)]
    with pytest.raises(ValueError, match=r"'step' is not floating point .* differs between"):
        merge_checkpoints(paths, [1, 1], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_overflowing_the_output_dtype_is_an_error(tmp_path):
    states = [random_state(i, scale=1e5) for i in range(2)]
    paths = [save_ckpt(tmp_path / f"ck{i}", s) for i, s in enumerate(states)]
    with pytest.raises(ValueError, match=r"non-finite values .*\(try --dtype fp32\)"):
        merge_checkpoints(paths, [1, 1], tmp_path / "out", dtype="fp16", progress=False)


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1, -1], "sum to zero"), ([1], "got 1 weights for 2 checkpoints")],
)
def test_bad_weights_are_refused(tmp_path, weights, message):
    paths, _ = make_ckpts(tmp_path, 2)
    with pytest.raises(ValueError, match=message):
        merge_checkpoints(paths, weights, tmp_path / "out", progress=False)


def test_no_checkpoints_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="at least one checkpoint"):
        merge_checkpoints([], [], tmp_path / "out", progress=False)


def test_an_existing_output_is_kept_unless_forced(tmp_path):
    paths, states = make_ckpts(tmp_path, 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="use --force"):
        merge_checkpoints(paths, [1, 1], tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError, match="not written by pmalopti"):
        merge_checkpoints(paths, [1, 1], tmp_path / "out", progress=False, force=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    write_marker(tmp_path / "out", "merge")  # as if pmalopti had written it
    merge_checkpoints(paths, [1, 1], tmp_path / "out", progress=False, force=True)
    assert not (tmp_path / "out" / "keep.txt").exists()
    assert set(read_all(tmp_path / "out")) == set(states[0])


def test_an_output_inside_an_input_is_refused(tmp_path):
    paths, _ = make_ckpts(tmp_path, 2)
    with pytest.raises(UserError, match="inside"):
        merge_checkpoints(paths, [1, 1], paths[0] / "merged", progress=False)
    assert not (paths[0] / "merged").exists()


def test_an_interrupted_merge_leaves_no_output_and_keeps_the_old_one(tmp_path, monkeypatch):
    paths, _ = make_ckpts(tmp_path, 3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    write_marker(tmp_path / "out", "merge")
    calls = 0
    original = ShardWriter.write_bytes

    def interrupt(self, name, dtype, data):
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        original(self, name, dtype, data)

    monkeypatch.setattr(ShardWriter, "write_bytes", interrupt)
    with pytest.raises(KeyboardInterrupt):
        merge_checkpoints(
            paths, [1, 1, 1], tmp_path / "out", force=True, progress=False, chunk_bytes=64
        )
    assert calls == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck0", "ck1", "ck2", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "keep.txt"]


def test_memory_use_does_not_depend_on_the_number_of_checkpoints(tmp_path, monkeypatch):
    """Buffers are allocated up front and reused: the count is fixed, whatever N is (one worker:
    with two, whether the second gets a piece at all depends on thread scheduling)."""
    allocated = []
    real_empty = np.empty

    def counting_empty(*args, **kw):
        t = real_empty(*args, **kw)
        allocated.append(t.nbytes)
        return t

    paths, _ = make_ckpts(tmp_path, 3)
    many = paths * 4  # 12 inputs
    counts = []
    for n, inputs in ((2, paths[:2]), (12, many)):
        allocated.clear()
        monkeypatch.setattr(np, "empty", counting_empty)
        merge_checkpoints(
            inputs, [1] * n, tmp_path / f"out{n}", progress=False, chunk_bytes=256, workers=1
        )
        monkeypatch.setattr(np, "empty", real_empty)
        counts.append((len(allocated), sum(allocated)))
    assert counts[0] == counts[1]


def test_a_file_truncated_during_the_merge_is_an_error_naming_it_not_a_crash(tmp_path):
    """Pieces are mapped from the files; a file cut short after its header was checked must not
    reach the mapping (reading past its end would kill the process with SIGBUS)."""
    paths, _ = make_ckpts(tmp_path, 2)
    with CheckpointReader(paths[0]) as r:
        name = max(r.specs, key=lambda n: r._stored[n].offset)  # the last one in its file
        count = r.specs[name].nbytes // r.specs[name].dtype.itemsize
        whole = r.map_bytes(name, 0, count, np.empty(0, np.uint8)).copy()
        file = r._stored[name].file
        os.truncate(file, file.stat().st_size - 4)
        with pytest.raises(ValueError, match=rf"{file.name}: tensor '{name}': file ended early"):
            r.map_bytes(name, 0, count, np.empty(0, np.uint8))
    assert whole.nbytes == r.specs[name].nbytes
