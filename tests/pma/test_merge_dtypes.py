"""Inputs that differ only in floating dtype merge in float32; quantized (FP8) inputs are refused."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from pmalopti.pma.in_memory import merged_state_dict
from pmalopti.pma.streaming import merge_checkpoints


def save(folder, tensors):
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def pair(tmp_path):
    """A bf16 'pre-trained' model and its fp32 'fine-tune' (as the HF Trainer saves it)."""
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(64, 33, generator=g), "b": torch.randn(7, generator=g)}
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    a = save(tmp_path / "base", {k: v.to(torch.bfloat16) for k, v in base.items()})
    b = save(tmp_path / "tuned", tuned)
    return a, b


def reference(paths, weights):
    sds = [load_file(p / "model.safetensors") for p in paths]
    return {k: sum(w * sd[k].double() for w, sd in zip(weights, sds, strict=True)) for k in sds[0]}


@pytest.mark.parametrize("dtype", [None, "bf16", "fp32"])
def test_a_bf16_and_an_fp32_checkpoint_merge_to_the_float64_reference(tmp_path, dtype, caplog):
    paths = pair(tmp_path)
    ref = reference(paths, [0.5, 0.5])
    with caplog.at_level(logging.INFO):
        out = merge_checkpoints(
            paths, [1, 1], tmp_path / "out", dtype=dtype, progress=False, chunk_bytes=64
        )
    merged = load_file(out / "model.safetensors")
    want = {None: torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    mant = {torch.bfloat16: 8, torch.float32: 24}[want]
    for k, r in ref.items():
        assert merged[k].dtype == want
        # float32 accumulation, then one rounding to the output dtype: within one ulp of it
        ulp = torch.exp2(torch.floor(torch.log2(r.abs().clamp_min(1e-30))) - (mant - 1))
        assert bool(((merged[k].double() - r).abs() <= ulp + 1e-7).all())
    said = (
        "output dtype: fp32 (the newest checkpoint's)"
        if dtype is None
        else f"output dtype: {dtype} (--dtype)"
    )
    assert said in caplog.text and "inputs hold bf16, fp32, summed in fp32" in caplog.text


def test_the_in_memory_merge_takes_mixed_dtypes_too(tmp_path):
    paths = pair(tmp_path)
    ref = reference(paths, [0.25, 0.75])
    merged = merged_state_dict(paths, [0.25, 0.75])
    for k, r in ref.items():
        assert merged[k].dtype == torch.float32
        torch.testing.assert_close(merged[k].double(), r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_tensors_are_refused_naming_the_tensor_before_anything_is_written(tmp_path, fp8):
    a = save(tmp_path / "a", {"w": torch.ones(4, 4), "q": torch.ones(4).to(fp8)})
    b = save(tmp_path / "b", {"w": torch.ones(4, 4), "q": torch.ones(4).to(fp8)})
    with pytest.raises(
        ValueError, match=r"tensor 'q' in checkpoint .*a is float8_e\w+, a quantized dtype"
    ):
        merge_checkpoints([a, b], [1, 1], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_read_ahead_asks_the_kernel_to_prefetch_each_file_and_changes_nothing(
    tmp_path, monkeypatch
):
    import os

    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, off, n, adv: calls.append((off, n)) or real(fd, off, n, adv)
    )
    paths = pair(tmp_path)
    plain = merge_checkpoints(paths, [1, 1], tmp_path / "plain", progress=False, chunk_bytes=256)
    ahead = merge_checkpoints(
        paths, [1, 1], tmp_path / "ahead", progress=False, chunk_bytes=256, read_ahead=8 << 20
    )
    assert (plain / "model.safetensors").read_bytes() == (ahead / "model.safetensors").read_bytes()
    assert calls and all(n > 0 for _, n in calls)
    # Each file is advised once per half window, not once per piece.
    assert len(calls) < 10


def test_a_quantized_checkpoint_is_refused_before_anything_is_written(tmp_path):
    a, b = pair(tmp_path)
    (b / "config.json").write_text(
        json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "gptq"}})
    )
    with pytest.raises(ValueError, match=r"tuned is quantized \(gptq, config.json"):
        merge_checkpoints([a, b], [1, 1], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
