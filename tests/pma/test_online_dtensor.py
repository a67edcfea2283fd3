"""OnlineAverager on FSDP2 / DTensor parameters: each rank averages its local shard.

FSDP2 (`fully_shard`) runs on CPU with the gloo backend in torch 2.13, so these are real FSDP2
modules. The default test uses one process (the DTensor code path, FSDP2 forward/backward and
optimizer steps); the slow one spawns two ranks, where each local shard is half a tensor.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pmalopti.pma import merge_weights
from pmalopti.pma.online import OnlineAverager, window_steps

fsdp = pytest.importorskip("torch.distributed.fsdp")
sys.path.insert(0, str(Path(__file__).parent))
from dcp_runs import process_group  # noqa: E402  the 2-rank gloo group the DCP tests use
from torch.distributed.tensor import DTensor, Shard, distribute_tensor  # noqa: E402

CFG = dict(method="wma", n=3, interval=2, every=4)  # overlapping windows: 0-4, 4-8, 8-12


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def sgd_steps(model: nn.Module, steps: range, on_step) -> None:
    """Identical batches on every rank, so a sharded and a plain model take identical steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for s in steps:
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(5, 6, generator=g), torch.randn(5, 4, generator=g)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        on_step(s)


def test_fsdp2_averager_on_local_shards_equals_the_plain_module_averager(tmp_path):
    plain = make_model()
    ref = OnlineAverager(plain, **CFG)
    ref.step(0)
    sgd_steps(plain, range(1, 10), ref.step)

    with process_group(0, 1, str(tmp_path / "pg")) as mesh:
        sharded = make_model()
        fsdp.fully_shard(sharded, mesh=mesh)
        assert all(isinstance(p, DTensor) for p in sharded.parameters())
        avg = OnlineAverager(sharded, **CFG)
        avg.step(0)
        state_at_5 = {}
        sgd_steps(
            sharded,
            range(1, 10),
            lambda s: (avg.step(s), s == 5 and state_at_5.update(avg.state_dict())),
        )
        assert avg.merged_step == ref.merged_step == 8
        full = avg.merged_state_dict(full=True)
        local = avg.merged_state_dict()
        for k, v in ref.merged_state_dict().items():
            torch.testing.assert_close(full[k], v, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(local[k], v, rtol=1e-6, atol=1e-7)  # one rank: shard = all

        live = {k: p.to_local().clone() for k, p in sharded.named_parameters()}
        with avg.swap_in():
            for k, p in sharded.named_parameters():
                assert torch.equal(p.full_tensor(), full[k])
        for k, p in sharded.named_parameters():
            assert torch.equal(p.to_local(), live[k])

        # the state saved mid-window loads back into a fresh averager over the sharded model
        avg2 = OnlineAverager(sharded, **CFG)
        avg2.load_state_dict(state_at_5)
        assert avg2.open_windows == [8]


def _two_rank_worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    with process_group(rank, 2, init_file) as mesh:
        model = make_model()
        fsdp.fully_shard(model, mesh=mesh)
        avg = OnlineAverager(model, **CFG)
        snaps: dict[int, dict[str, torch.Tensor]] = {}

        def on_step(s: int) -> None:
            snaps[s] = {k: p.detach().full_tensor().clone() for k, p in model.named_parameters()}
            avg.step(s)
            if s == 5:  # accumulators hold this rank's shard only: nothing was gathered
                for w in avg._windows.values():
                    for k, acc in w.acc.items():
                        t = avg._tensors[k]
                        assert acc.shape == t.to_local().shape != t.shape

        on_step(0)
        sgd_steps(model, range(1, 9), on_step)
        ws = merge_weights("wma", 3)
        merged_local = avg.merged_state_dict(dtype=torch.float32)
        merged_full = avg.merged_state_dict(full=True)
        for k, p in model.named_parameters():
            ref = sum(
                w * snaps[s][k].double() for w, s in zip(ws, window_steps(8, 3, 2), strict=True)
            )
            ref_local = distribute_tensor(ref.float(), mesh, [Shard(0)]).to_local()
            torch.testing.assert_close(merged_local[k], ref_local, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(merged_full[k].double(), ref, rtol=1e-6, atol=1e-6)
            assert p.placements == (Shard(0),)


@pytest.mark.slow
def test_two_fsdp2_ranks_each_average_their_own_shard_and_gather_only_on_request(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(_two_rank_worker, args=(str(tmp_path / "pg"),), nprocs=2, join=True)


def test_merges_of_sharded_replicated_and_plain_tensors_are_written_whole(tmp_path):
    # save_merge_hf gathers Shard(0) by dist.gather and any other placement by full_tensor();
    # save_merge_dcp saves the shards as they are. Both must hold merged_state_dict(full=True).
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.tensor import Replicate

    from pmalopti.pma.dcp_online import save_merge_dcp, save_merge_hf

    with process_group(0, 1, str(tmp_path / "pg")) as mesh:
        g = torch.Generator().manual_seed(0)
        live = {
            "rows": distribute_tensor(torch.randn(5, 3, generator=g), mesh, [Shard(0)]),
            "copy": distribute_tensor(torch.randn(4, generator=g), mesh, [Replicate()]),
            "plain": torch.randn(2, 2, generator=g),
        }
        avg = OnlineAverager(live, method="sma", n=2, interval=1, every=2)
        avg.step(1)
        with torch.no_grad():
            for t in live.values():
                (t.to_local() if isinstance(t, DTensor) else t).mul_(3)
        avg.step(2)
        want = avg.merged_state_dict(full=True)
        hf = load_file(save_merge_hf(avg, tmp_path / "hf") / "model.safetensors")
        out = save_merge_dcp(avg, tmp_path / "dcp")
        got = {k: torch.empty_like(v) for k, v in want.items()}
        dcp.load(got, checkpoint_id=str(out))
    for k, v in want.items():
        torch.testing.assert_close(hf[k], v)
        torch.testing.assert_close(got[k], v)
        torch.testing.assert_close(v, 2 * (live[k].full_tensor() if k != "plain" else live[k]) / 3)
