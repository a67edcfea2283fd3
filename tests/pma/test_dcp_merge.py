"""PMA on real DCP checkpoints of a 2-rank FSDP2 model, in the four frameworks' layouts.

One module fixture spawns two gloo ranks that save three steps in each layout (tests/pma/
dcp_runs.py); the merges run here, in one process, and are checked against a float64 reference
built from the gathered weights rank 0 recorded.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from pmalopti.cli import main
from pmalopti.pma import merge_weights
from pmalopti.pma.dcp_layout import Layout, detect, detect_all
from pmalopti.pma.dcp_merge import merge_dcp
from pmalopti.pma.dcp_read import DcpSource

sys.path.insert(0, str(Path(__file__).parent))
import dcp_runs

pytest.importorskip("torch.distributed.fsdp")
LAYOUTS = list(dcp_runs.LAYOUT_DIRS)
WEIGHTS = dcp_runs.WEIGHTS
MODEL_AT = dcp_runs.MODEL_AT


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return dcp_runs.write_runs(tmp_path_factory.mktemp("dcp-runs"))


@pytest.fixture(scope="module")
def reference(runs) -> dict[str, torch.Tensor]:
    refs = [torch.load(runs / f"ref-{s}.pt", weights_only=True) for s in dcp_runs.STEPS]
    return {
        k: sum(w * r["model"][k].double() for w, r in zip(WEIGHTS, refs, strict=True))
        for k in refs[-1]["model"]
    }


def ckpt_paths(runs: Path, layout: str) -> list[Path]:
    return [runs / dcp_runs.LAYOUT_DIRS[layout](s) for s in dcp_runs.STEPS]


def read_all(dcp_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a DCP folder, loaded by dcp.load itself (one process, no process group)."""
    md = DcpSource(dcp_dir).entries
    sd = {
        k: torch.empty(tuple(m.size), dtype=m.properties.dtype)
        for k, m in md.items()
        if hasattr(m, "size")
    }
    dcp.load(sd, checkpoint_id=str(dcp_dir), no_dist=True)
    return sd


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_detected_with_its_step_and_dcp_folder(runs, layout):
    paths = ckpt_paths(runs, layout)
    found = detect_all(paths)
    assert [c.layout for c in found] == [Layout(layout)] * 3
    assert [c.step for c in found] == list(dcp_runs.STEPS)
    sub = MODEL_AT[layout][0]
    assert found[-1].dcp_dir == paths[-1] / sub if sub else paths[-1]
    if sub:  # the DCP folder itself is accepted too, with the step of its parent
        inner = detect(paths[-1] / sub)
        assert (inner.layout, inner.step, inner.subdir) == (Layout(layout), 3, "")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_merges_to_the_float64_reference_and_drops_non_model_entries(
    runs, reference, layout, tmp_path
):
    out = merge_dcp(detect_all(ckpt_paths(runs, layout)), WEIGHTS, tmp_path / "m", progress=False)
    sub, prefix = MODEL_AT[layout]
    merged = read_all(out / sub)
    assert sorted(merged) == sorted(prefix + k for k in reference)  # optimizer & co. dropped
    assert not any(isinstance(v, dict) for v in DcpSource(out / sub).entries.values())
    for k, ref in reference.items():
        torch.testing.assert_close(merged[prefix + k].double(), ref, rtol=1e-6, atol=1e-7)
    # the newest input's chunking: two row-halves per tensor, as the two ranks saved them
    src, new = DcpSource(ckpt_paths(runs, layout)[-1] / sub), DcpSource(out / sub)
    for k in new.entries:
        assert new.tensor(k).chunks == src.tensor(k).chunks


def test_merged_checkpoints_load_into_the_two_rank_fsdp2_model_they_came_from(runs, reference):
    # The fixture's ranks merged each layout's run (rank 0), then dcp.load-ed each merge into a
    # fresh fully_shard model and gathered what they loaded.
    loaded = torch.load(runs / "loaded.pt", weights_only=True)
    assert sorted(loaded) == sorted(LAYOUTS)
    for layout in LAYOUTS:
        got = loaded[layout]
        assert set(got["placements"].values()) == {"(Shard(dim=0),)"}
        for k, ref in reference.items():
            torch.testing.assert_close(got["model"][k].double(), ref, rtol=1e-6, atol=1e-7)


def test_the_weights_are_the_paper_wma_weights():
    assert pytest.approx(merge_weights("wma", 3)) == WEIGHTS


@pytest.mark.parametrize("layout", ["torchtitan", "olmo-core", "megatron"])
def test_keep_non_model_copies_the_newest_optimizer_state_bit_for_bit(runs, layout, tmp_path):
    ckpts = detect_all(ckpt_paths(runs, layout))
    out = merge_dcp(ckpts, WEIGHTS, tmp_path / "m", keep_non_model=True, progress=False)
    sub, _ = MODEL_AT[layout]
    newest = DcpSource(ckpts[-1].dcp_dir)
    merged = DcpSource(out / sub)
    assert set(merged.entries) == set(newest.entries)
    got, want = read_all(out / sub), read_all(ckpts[-1].dcp_dir)
    non_model = [k for k in want if k.startswith(("optimizer.", "optim.", "train_state."))]
    assert len(non_model) > 40
    for k in non_model:
        assert torch.equal(got[k], want[k]), k
    for k in newest.entries:
        if not hasattr(newest.entries[k], "size"):  # bytes: param_groups, data loader, RNG
            assert merged.read_bytes(k) == newest.read_bytes(k)


def test_side_files_follow_the_layout(runs, tmp_path):
    acc = detect_all(ckpt_paths(runs, "accelerate"))
    m = merge_dcp(acc, WEIGHTS, tmp_path / "acc", progress=False)
    assert sorted(p.name for p in m.iterdir()) == [
        ".pmalopti.json",
        "config.json", "pmalopti_merge.json", "pytorch_model_fsdp_0",
    ]  # fmt: skip
    k = merge_dcp(acc, WEIGHTS, tmp_path / "acc-keep", keep_non_model=True, progress=False)
    assert {"optimizer_0", "scheduler.pt", "trainer_state.json"} <= {p.name for p in k.iterdir()}
    olmo = merge_dcp(
        detect_all(ckpt_paths(runs, "olmo-core")), WEIGHTS, tmp_path / "o", keep_non_model=True
    )
    assert (olmo / "train" / "rank1.pt").is_file() and (olmo / "config.json").is_file()
    mega = merge_dcp(detect_all(ckpt_paths(runs, "megatron")), WEIGHTS, tmp_path / "g")
    assert (mega / "common.pt").read_bytes() == (
        ckpt_paths(runs, "megatron")[-1] / "common.pt"
    ).read_bytes()


@pytest.mark.parametrize(
    "layout,run_dir",
    [
        ("torchtitan", "torchtitan/checkpoint"),
        ("olmo-core", "olmo"),
        ("megatron", "megatron"),
        ("accelerate", "accelerate"),
    ],
)
def test_the_merge_command_finds_and_merges_each_layouts_run_folder(
    runs, reference, layout, run_dir, tmp_path, capsys
):
    out = tmp_path / "merged"
    argv = ["merge", "--run-dir", str(runs / run_dir), "--method", "wma", "-o", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"dcp, {layout}" in text
    sub, prefix = MODEL_AT[layout]
    merged = read_all(out / sub)
    for k, ref in reference.items():
        torch.testing.assert_close(merged[prefix + k].double(), ref, rtol=1e-6, atol=1e-7)


def test_hf_format_writes_a_folder_from_pretrained_loads(runs, reference, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    paths = [str(p) for p in ckpt_paths(runs, "accelerate")]
    assert main(["merge", *paths, "--method", "wma", "--format", "hf", "-o", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    for k, p in model.state_dict().items():
        torch.testing.assert_close(p.double(), reference[k], rtol=1e-6, atol=1e-7)


# --- bad inputs: one clear line, exit code 2, nothing written ---------------------------------


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_a_dcp_folder_without_metadata_is_refused_naming_it(runs, tmp_path, capsys):
    bad = tmp_path / "step-2"
    shutil.copytree(ckpt_paths(runs, "torchtitan")[1], bad)
    (bad / ".metadata").unlink()
    newest = ckpt_paths(runs, "torchtitan")[2]
    code, line = run_cli(["merge", str(bad), str(newest), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "no .metadata" in line and str(bad) in line
    assert not (tmp_path / "o").exists()


def test_mixed_layouts_and_mixed_kinds_are_refused(runs, tmp_path, capsys):
    a, b = ckpt_paths(runs, "torchtitan")[0], ckpt_paths(runs, "megatron")[1]
    code, line = run_cli(["merge", str(a), str(b), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "mixed DCP layouts" in line and "torchtitan" in line
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"")
    code, line = run_cli(["merge", str(hf), str(a), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "is not a DCP checkpoint" in line


def _save_plain(path: Path, sd: dict) -> Path:
    dcp.save(sd, checkpoint_id=str(path), no_dist=True)
    return path


def test_mismatched_shapes_and_keys_are_refused_naming_the_tensor(tmp_path, capsys):
    a = _save_plain(tmp_path / "step-1", {"w": torch.zeros(4, 2), "b": torch.zeros(2)})
    b = _save_plain(tmp_path / "step-2", {"w": torch.zeros(4, 3), "b": torch.zeros(2)})
    c = _save_plain(tmp_path / "step-3", {"w": torch.zeros(4, 2)})
    code, line = run_cli(["merge", str(a), str(b), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "tensor 'w': shape [4, 2]" in line
    code, line = run_cli(["merge", str(a), str(c), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "model key 'b'" in line
    assert not (tmp_path / "o").exists()


def test_integer_model_tensors_must_agree_and_are_copied(tmp_path):
    a = _save_plain(tmp_path / "step-1", {"w": torch.ones(3), "n": torch.tensor([1, 2])})
    b = _save_plain(tmp_path / "step-2", {"w": torch.zeros(3), "n": torch.tensor([1, 2])})
    c = _save_plain(tmp_path / "step-3", {"w": torch.zeros(3), "n": torch.tensor([1, 3])})
    out = merge_dcp(detect_all([a, b]), [1, 1], tmp_path / "o", progress=False)
    got = read_all(out)
    assert torch.equal(got["n"], torch.tensor([1, 2])) and torch.equal(
        got["w"], torch.full((3,), 0.5)
    )
    with pytest.raises(ValueError, match="tensor 'n' is not floating point"):
        merge_dcp(detect_all([a, c]), [1, 1], tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()


def test_model_prefix_overrides_the_layout_rule(tmp_path):
    sd = lambda v: {"net": {"w": torch.full((2,), v)}, "ema": {"w": torch.full((2,), -v)}}  # noqa: E731
    a, b = _save_plain(tmp_path / "x1", sd(1.0)), _save_plain(tmp_path / "x2", sd(3.0))
    out = merge_dcp(detect_all([a, b]), [1, 1], tmp_path / "o", model_prefix=["net."])
    assert set(read_all(out)) == {"net.w"} and torch.equal(
        read_all(out)["net.w"], torch.full((2,), 2.0)
    )


def test_hf_format_is_refused_where_no_mapping_is_known(runs, tmp_path, capsys):
    olmo = tmp_path / "step5"
    _save_plain(
        olmo / "model_and_optim", {"model": {"blocks.0.attention.w_q.weight": torch.zeros(16, 16)}}
    )
    shutil.copy(ckpt_paths(runs, "olmo-core")[-1] / "config.json", olmo / "config.json")
    code, line = run_cli(["merge", str(olmo), "--format", "hf", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "no known mapping from olmo-core keys" in line


def test_online_merge_of_the_fsdp2_model_is_written_without_any_rank_holding_the_model(
    runs, reference
):
    # The fixture's ranks ran OnlineAverager (WMA of steps 1, 2, 3: the offline reference) on
    # the sharded model and wrote the merge as HF (gathered to rank 0, one tensor at a time)
    # and as DCP (each rank its own shards), recording what they gathered.
    import json

    from safetensors.torch import load_file

    facts = [json.loads((runs / f"online-facts-{r}.json").read_text()) for r in (0, 1)]
    for f in facts:
        assert f["full_tensor_calls"] == 0  # no all-gather of a whole tensor on any rank
        assert f["gather_sent"] == f["local_numel"]  # each rank sends its shard, tensor by tensor
        assert f["local_numel"] != f["full_numel"]  # ... which is half of each tensor
    assert facts[1]["gather_received"] == [0] * len(facts[1]["gather_sent"])  # rank 1: own shard
    assert max(facts[0]["gather_received"]) >= max(facts[0]["full_numel"])  # rank 0: one tensor
    hf = load_file(runs / "online-hf" / "model.safetensors")
    dcp_sd = read_all(runs / "online-dcp")
    assert sorted(hf) == sorted(dcp_sd) == sorted(reference)
    for k, ref in reference.items():
        torch.testing.assert_close(hf[k].double(), ref, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(dcp_sd[k].double(), ref, rtol=1e-6, atol=1e-7)
    chunks = DcpSource(runs / "online-dcp").tensor("lm_head.weight").chunks
    assert [tuple(c.sizes) for c in chunks] == [(32, 16), (32, 16)]  # one shard per rank


def test_inputs_saved_with_another_world_size_are_resharded_to_the_newest_chunks(
    runs, reference, tmp_path
):
    # steps 1 and 2 as the two ranks saved them (row halves); step 3 re-saved by one process
    # (one chunk per tensor), as after a restart on fewer GPUs.
    ref3 = torch.load(runs / "ref-3.pt", weights_only=True)["model"]
    one = _save_plain(tmp_path / "step-3", dict(ref3))
    paths = [*ckpt_paths(runs, "torchtitan")[:2], one]
    out = merge_dcp(detect_all(paths), WEIGHTS, tmp_path / "m", progress=False)
    merged = read_all(out)
    for k, ref in reference.items():
        torch.testing.assert_close(merged[k].double(), ref, rtol=1e-6, atol=1e-7)
        assert len(DcpSource(out).tensor(k).chunks) == 1  # the newest input's chunking


def test_dcp_options_on_hugging_face_inputs_are_refused(tmp_path, capsys):
    from safetensors.torch import save_file

    for s in (1, 2):
        (tmp_path / f"checkpoint-{s}").mkdir()
        save_file(
            {"w": torch.full((2,), float(s))}, tmp_path / f"checkpoint-{s}" / "model.safetensors"
        )
    paths = [str(tmp_path / f"checkpoint-{s}") for s in (1, 2)]
    code, line = run_cli(["merge", *paths, "--keep-non-model", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "are for DCP checkpoints" in line
