"""OnlineAverager: the online merge equals the offline merge of the same snapshots."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from pmalopti.pma import merge_weights
from pmalopti.pma.online import (
    OnlineAverageConfig,
    OnlineAverager,
    next_merge_step,
    window_steps,
    windows_at,
)


class Toy(nn.Module):
    """Float32 and bfloat16 parameters, an integer buffer, a float buffer, a tied weight."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(5, 3, generator=g))
        self.b = nn.Parameter(torch.randn(7, generator=g).to(torch.bfloat16))
        self.tied = self.a  # a second name for the same parameter
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("scale", torch.ones(3))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


@torch.no_grad()
def train_step(model: nn.Module, step: int) -> None:
    """A deterministic stand-in for an optimizer step (depends only on `step`)."""
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.dtype))
    model.scale.mul_(1.01)
    model.count.fill_(step)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def offline_merge(snaps: list[dict[str, torch.Tensor]], method, alpha=None) -> dict:
    """The reference: sum_i w_i M_i in float64 over whole snapshots; non-floats from the newest."""
    ws = merge_weights(method, len(snaps), alpha)
    out = {}
    for k, newest in snaps[-1].items():
        if newest.is_floating_point():
            out[k] = sum(w * s[k].double() for w, s in zip(ws, snaps, strict=True))
        else:
            out[k] = newest
    return out


def run(cfg: dict, steps: int, model: nn.Module | None = None):
    """Train `steps` steps with an averager; return every merge and every step's snapshot."""
    model = model or Toy()
    avg = OnlineAverager(model, **cfg)
    snaps = {0: snapshot(model)}
    avg.step(0)
    merges = {}
    for s in range(1, steps + 1):
        train_step(model, s)
        snaps[s] = snapshot(model)
        if avg.step(s):
            merges[s] = avg.merged_state_dict(dtype=torch.float32)
    return model, avg, snaps, merges


@pytest.mark.parametrize(
    ("method", "alpha"), [("sma", None), ("wma", None), ("ema", 0.2), ("ema", 0.1)]
)
@pytest.mark.parametrize(
    ("n", "interval", "every"),
    [(4, 3, 12), (3, 2, 4), (5, 1, 2)],  # back to back; overlapping windows; many overlapping
)
def test_online_merge_equals_offline_merge_of_the_same_snapshots(method, alpha, n, interval, every):
    cfg = dict(method=method, alpha=alpha, n=n, interval=interval, every=every)
    _, _, snaps, merges = run(cfg, steps=30)
    expected_points = [p for p in range(every, 31, every) if p - (n - 1) * interval >= 0]
    assert sorted(merges) == expected_points
    for p, merged in merges.items():
        ref = offline_merge([snaps[s] for s in window_steps(p, n, interval)], method, alpha)
        assert set(merged) == {"a", "b", "count", "scale"}  # tied once, non-persistent skipped
        for k, v in merged.items():
            if v.is_floating_point():
                torch.testing.assert_close(v.double(), ref[k], rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(v, ref[k]), f"{k} at merge {p} is not the newest snapshot's"


def test_merged_tensors_come_back_in_their_stored_dtype_unless_asked():
    _, avg, _, merges = run(dict(method="sma", n=2, interval=1, every=4), steps=4)
    stored = avg.merged_state_dict()
    assert stored["b"].dtype == torch.bfloat16 and stored["count"].dtype == torch.int64
    assert torch.equal(stored["b"], merges[4]["b"].to(torch.bfloat16))


def test_ema_with_alpha_one_is_the_newest_snapshot_and_sma_of_one_is_itself():
    for cfg in (dict(method="ema", alpha=1.0, n=4, interval=2), dict(method="sma", n=1)):
        _, _, snaps, merges = run({**cfg, "every": 8}, steps=8)
        for k, v in merges[8].items():
            assert torch.equal(v.to(snaps[8][k].dtype), snaps[8][k])


def test_windows_are_scheduled_at_multiples_of_every_and_respect_start_step():
    cfg = OnlineAverageConfig(n=3, interval=5, every=10, start_step=3)
    assert window_steps(20, 3, 5) == [10, 15, 20]
    # step 10 is the oldest snapshot of the merge at 20 and the newest of the merge at 10,
    # whose window (0, 5, 10) starts before start_step and is therefore never scheduled.
    assert windows_at(10, cfg) == [(20, 0)]
    assert windows_at(15, cfg) == [(20, 1)]
    assert windows_at(20, cfg) == [(20, 2), (30, 0)]  # the merge at 20; the next window starts
    assert windows_at(7, cfg) == []
    assert next_merge_step(0, cfg) == 20 and next_merge_step(20, cfg) == 30
    assert OnlineAverageConfig(n=4, interval=5).every == 20  # default M = N * V


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(method="avg"), "method"),
        (dict(n=0), "n"),
        (dict(interval=-1), "interval"),
        (dict(every=0), "every"),
        (dict(start_step=-5), "start_step"),
        (dict(device="cuda"), "device"),
        (dict(method="ema"), "alpha"),
        (dict(method="ema", alpha=1.5), "alpha"),
        (dict(method="sma", alpha=0.2), "alpha"),
    ],
)
def test_a_bad_setting_is_refused_at_construction_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        OnlineAverager(Toy(), **kwargs)


def test_swap_in_puts_the_merge_in_and_swap_out_restores_live_weights_bit_for_bit():
    model, avg, _, merges = run(dict(method="wma", n=3, interval=2, every=6), steps=7)
    live = snapshot(model)
    with avg.swap_in():
        assert avg.swapped_in
        for k, v in model.state_dict().items():
            if k in merges[6]:
                assert torch.equal(v, merges[6][k].to(v.dtype)), k
        with pytest.raises(RuntimeError, match="swapped in"):
            avg.step(8)
        with pytest.raises(RuntimeError, match="already swapped in"):
            avg.swap_in()
    for k, v in model.state_dict().items():
        # compare the raw bits, not the values (-0.0 == 0.0 would pass a value check)
        assert torch.equal(bits(v), bits(live[k])), k
    avg.swap_in()  # the call form
    avg.swap_out()
    for k, v in model.state_dict().items():
        assert torch.equal(bits(v), bits(live[k])), k


def test_averager_state_survives_save_and_load_mid_window():
    cfg = dict(method="ema", alpha=0.2, n=4, interval=2, every=4)  # overlapping windows
    _, _, _, uninterrupted = run(cfg, steps=20)

    model = Toy()
    avg = OnlineAverager(model, **cfg)
    avg.step(0)
    for s in range(1, 12):
        train_step(model, s)
        avg.step(s)
    assert avg.open_windows == [12, 16]  # interrupted while two windows are half folded
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "pma": avg.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    resumed = Toy()
    resumed.load_state_dict(saved["model"])
    avg2 = OnlineAverager(resumed, **cfg)
    avg2.load_state_dict(saved["pma"])
    assert avg2.step(11) is False  # the step already seen before the interruption is a no-op
    assert avg2.merged_step == 8
    assert torch.equal(avg2.merged_state_dict(dtype=torch.float32)["a"], uninterrupted[8]["a"])
    merges = {}
    for s in range(12, 21):
        train_step(resumed, s)
        if avg2.step(s):
            merges[s] = avg2.merged_state_dict(dtype=torch.float32)
    assert sorted(merges) == [12, 16, 20]
    for p, merged in merges.items():
        for k, v in merged.items():
            assert torch.equal(v, uninterrupted[p][k]), f"{k} at merge {p}"


def test_loading_state_saved_with_another_schedule_or_model_is_refused():
    model, avg, _, _ = run(dict(method="sma", n=2, interval=1, every=4), steps=5)
    state = avg.state_dict()
    with pytest.raises(ValueError, match="interval"):
        OnlineAverager(model, method="sma", n=2, interval=2, every=4).load_state_dict(state)
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="names"):
        OnlineAverager(other, method="sma", n=2, interval=1, every=4).load_state_dict(state)


def test_a_missed_snapshot_drops_its_merge_with_a_warning_and_steps_cannot_go_back():
    model = Toy()
    avg = OnlineAverager(model, method="sma", n=3, interval=2, every=10)  # window 6, 8, 10
    avg.step(6)
    with pytest.warns(RuntimeWarning, match="dropped the merge at step 10.*step 8"):
        avg.step(9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not again at the merge point
        assert avg.step(10) is False and avg.merged_step is None
    with pytest.raises(ValueError, match="went back from 10 to 4"):
        avg.step(4)
    with pytest.raises(RuntimeError, match="next merge point is step 20"):
        avg.merged_state_dict()


def test_a_merge_whose_first_snapshot_was_never_seen_is_skipped_with_a_warning():
    avg = OnlineAverager(Toy(), method="sma", n=3, interval=2, every=10)
    avg.step(7)  # started watching after the window's first snapshot (step 6)
    avg.step(8)
    with pytest.warns(RuntimeWarning, match="skipped the merge at step 10"):
        assert avg.step(10) is False


def test_a_name_to_tensor_mapping_is_averaged_like_a_module():
    model = Toy()
    twin = copy.deepcopy(model)
    params = dict(twin.named_parameters())
    cfg = dict(method="wma", n=3, interval=1, every=3)
    a, b = OnlineAverager(model, **cfg), OnlineAverager(params, **cfg)
    for s in range(1, 4):
        train_step(model, s)
        train_step(twin, s)
        a.step(s)
        b.step(s)
    merged = b.merged_state_dict()
    assert set(merged) == {"a", "b"}
    for k, v in merged.items():
        assert torch.equal(v, a.merged_state_dict()[k])


def test_deepspeed_zero3_partitioned_parameters_are_refused_by_name():
    model = Toy()
    model.a.ds_id = 0  # what DeepSpeed ZeRO-3 attaches to each partitioned parameter
    with pytest.raises(ValueError, match="'a' is partitioned by DeepSpeed ZeRO-3"):
        OnlineAverager(model)
