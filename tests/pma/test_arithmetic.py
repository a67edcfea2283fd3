"""One merge arithmetic (pma.arithmetic): the numpy and torch paths give the same bits."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pmalopti.pma import merge_loop
from pmalopti.pma.arithmetic import count_overflow, fold, round_into, weighted_sum
from pmalopti.pma.in_memory import merged_state_dict
from pmalopti.pma.streaming import merge_checkpoints

CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def awkward_floats(n: int, seed: int) -> torch.Tensor:
    """float32 values with every case a conversion can get wrong: signed zeros, subnormals of
    float32, bf16 and fp16, rounding ties, the largest finite values, inf, NaN; (n,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp2(torch.randint(-30, 30, (n,), generator=g))
    bits = torch.randint(0, 2**31 - 1, (n,), generator=g, dtype=torch.int64)
    limits = [0.0, -0.0, 1e-40, -1e-45, 6e-8, 3e-5, 65504.0, 65519.0, 65520.0, -7e4, 3.3e38]
    ties = [1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-11, -(1 + 2**-9)]
    special = torch.tensor([*limits, -3.4e38, float("inf"), float("-inf"), *ties])
    x[: len(special)] = special[:n]
    x[len(special) :: 7] = (bits[len(special) :: 7] - 2**30).to(torch.int32).view(torch.float32)
    x[5::97] = float("nan")
    return x


def numpy_sum(xs, ws, k):
    """weighted_sum over torch tensors' bytes; returns the float32 sums (k,) in element order
    and the split-layout array itself."""
    acc = np.empty(k, np.float32)
    inputs = [(x.view(torch.uint8).numpy(), CODES[x.dtype]) for x in xs]
    weighted_sum(acc, inputs, [np.float32(w) for w in ws], np.empty(k, np.uint32))
    even = (k + 1) // 2
    ordered = np.empty(k, np.float32)
    ordered[0::2], ordered[1::2] = acc[:even], acc[even:]
    return ordered, acc


@pytest.mark.parametrize("k", [1001, 1000, 1, 0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_one_input_widens_to_torchs_float32_bits(dtype, k):
    x = awkward_floats(k, 0).to(dtype)  # (k,)
    ordered, _ = numpy_sum([x], [1.0], k)
    theirs = x.float().numpy()
    nan = np.isnan(theirs)  # x * 1 keeps every value but may quiet a NaN
    assert np.array_equal(np.isnan(ordered), nan)
    assert np.array_equal(ordered[~nan].view(np.uint32), theirs[~nan].view(np.uint32))


@pytest.mark.parametrize("k", [3001, 3000, 1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rounding_gives_torchs_bits_and_keeps_nan_a_nan(dtype, k):
    x = awkward_floats(k, 1)  # (k,) float32
    _, split = numpy_sum([x], [1.0], k)
    out = np.empty(k * dtype.itemsize, np.uint8)
    round_into(split, CODES[dtype], out, np.empty(k, np.uint32))
    ours = torch.from_numpy(out).view(dtype)
    theirs = x.to(dtype)
    nan = torch.isnan(theirs)
    assert torch.equal(torch.isnan(ours), nan)
    mine, want = ours[~nan].view(torch.uint8), theirs[~nan].view(torch.uint8)
    assert torch.equal(mine, want)


@pytest.mark.parametrize("k", [5003, 5002])
@pytest.mark.parametrize(
    "dtypes",
    [
        [torch.bfloat16] * 7,
        [torch.float16] * 7,
        [torch.float32] * 7,
        [torch.float32, torch.bfloat16, torch.float16] * 2 + [torch.bfloat16],
    ],
)
def test_the_numpy_fold_equals_the_torch_fold_and_the_exact_definition(dtypes, k):
    """acc = fl(w1 x1); acc = fl(acc + fl(wi xi)): numpy, torch and a float64 emulation (the
    product of two float32 is exact in float64, so rounding it once is fl) agree bit for bit."""
    xs = [awkward_floats(k, 10 + i).to(d) for i, d in enumerate(dtypes)]
    ws = [0.3, -1 / 3, 0.1, 1e-3, 2.5, 1 / 7, 0.0625]
    acc_np, _ = numpy_sum(xs, ws, k)
    acc_t = torch.empty(k)
    for i, (x, w) in enumerate(zip(xs, ws, strict=True)):
        fold(acc_t, x.float().clone(), w, first=i == 0, scratch=True)
    ref = np.zeros(k, np.float32)
    with np.errstate(all="ignore"):
        for i, (x, w) in enumerate(zip(xs, ws, strict=True)):
            prod = (x.double().numpy() * np.float64(np.float32(w))).astype(np.float32)
            ref = prod if i == 0 else (ref.astype(np.float64) + prod).astype(np.float32)
    nan = np.isnan(ref)  # which NaN (sign, payload) an operation returns is the CPU's choice
    for got in (acc_np, acc_t.numpy()):
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))


def test_a_fused_multiply_add_would_differ_so_the_definition_matters():
    """The case the definition settles: fma(w, x, acc) != fl(acc + fl(w x)) here."""
    w, x, acc = np.float32(1 + 2**-12), np.float32(1 + 2**-12), np.float32(-(1 + 2**-11))
    fused = np.float32(np.float64(w) * np.float64(x) + np.float64(acc))  # exact, rounded once
    ours, _ = numpy_sum([torch.tensor([acc.item()]), torch.tensor([x.item()])], [1.0, float(w)], 1)
    t = torch.tensor([acc.item()])
    fold(t, torch.tensor([x.item()]), float(w), first=False)
    assert ours[0] == t.item() == 0.0 and fused == 2.0**-24


def test_overflow_counts_values_that_round_to_inf_in_the_output_dtype():
    acc = np.array([1.0, 65519.0, 65520.0, -7e4, np.nan, 3.39e38, 3.4e38, -np.inf], np.float32)
    assert count_overflow(acc, "F16") == 6
    assert count_overflow(acc, "BF16") == 3
    assert count_overflow(acc, "F32") == 2
    assert count_overflow(acc[:2], "F16") == 0


def save(folder, tensors):
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


@pytest.mark.parametrize("chunk", [4096, 4 << 20])  # many pieces; many blocks in one
@pytest.mark.parametrize("out", [None, "bf16", "fp16", "fp32"])
def test_the_streamed_numpy_merge_equals_the_torch_merge_bit_for_bit(
    tmp_path, monkeypatch, out, chunk
):
    """Mixed bf16/fp16/fp32 inputs, odd shapes, tensors of many blocks and odd last blocks."""
    monkeypatch.setattr(merge_loop, "BLOCK", 1000)
    g = torch.Generator().manual_seed(0)
    shapes = {"big": (257, 301), "odd": (3, 5, 7), "one": (1,), "empty": (0, 4)}
    dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.bfloat16]
    paths = [
        save(
            tmp_path / f"ck{i}",
            {k: (torch.randn(s, generator=g) * 3).to(d) for k, s in shapes.items()},
        )
        for i, d in enumerate(dtypes)
    ]
    weights = [0.1, 0.2, 0.3, 0.4]
    merged = merge_checkpoints(
        paths, weights, tmp_path / "out", dtype=out, progress=False, chunk_bytes=chunk
    )
    streamed = load_file(merged / "model.safetensors")
    in_memory = merged_state_dict(paths, weights)  # torch; rounds to the newest's dtype (bf16)
    want = {None: torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}
    want = want.get(out, torch.float32)
    for k in shapes:
        expected = sum_fp32(paths, weights, k).to(want)  # torch's fold and torch's rounding
        assert streamed[k].dtype == want
        assert torch.equal(streamed[k].view(torch.uint8), expected.view(torch.uint8)), k
        if want == torch.bfloat16:
            assert torch.equal(in_memory[k].view(torch.uint8), expected.view(torch.uint8)), k


def sum_fp32(paths, weights, key):
    acc = None
    for i, (p, w) in enumerate(zip(paths, weights, strict=True)):
        x = load_file(p / "model.safetensors")[key].float()
        if i == 0:
            acc = torch.empty_like(x)
        fold(acc, x, w, first=i == 0, scratch=True)
    return acc


def test_merging_safetensors_from_the_command_line_never_imports_torch(tmp_path):
    g = torch.Generator().manual_seed(0)
    paths = [save(tmp_path / f"ck{i}", {"w": torch.randn(8, 8, generator=g)}) for i in range(2)]
    code = (
        "import sys; from pmalopti.cli import main; "
        f"rc = main(['merge', {str(paths[0])!r}, {str(paths[1])!r}, '-o', "
        f"{str(tmp_path / 'out')!r}, '--dtype', 'bf16']); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
        "print(rc, heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "out" / "model.safetensors").is_file()
