"""PMA while training: fold snapshots of the live weights into running float32 averages.

The paper (arXiv 2505.12082, Sec. 3-4) merges the last N checkpoints, V steps apart, of a
pre-training run. Online, nothing has to be saved: merge points fall every M steps and the window
ending at merge point p takes its snapshots at steps p-(N-1)V, ..., p-V, p. Since N and the
weights w_i (from `merge_weights`) are known before the first snapshot, every window needs one
float32 accumulator, acc += w_i * theta(step_i) (the same single-accumulator idea as OLMo-core's
model merger); windows overlap when (N-1)V >= M, each with its own accumulator.

Works on plain modules and on FSDP2 / DTensor parameters: each rank averages its local shard
(`to_local()`), so nothing is gathered until someone asks for full tensors.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pmalopti.pma.arithmetic import fold
from pmalopti.pma.tracking import local_shard, tracked_tensors
from pmalopti.pma.weights import Method
from pmalopti.pma.windows import (  # re-exported: the averager's public API
    Device,
    OnlineAverageConfig,
    next_merge_step,
    window_steps,
    windows_at,
)

try:  # torch builds without distributed support have no DTensor; nothing is sharded there.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]

STATE_FORMAT = "pmalopti.online/1"


# --- the averager ----------------------------------------------------------------------------


@dataclass
class _Window:
    merge_step: int
    next_index: int  # index (0 = oldest) of the next snapshot to fold
    acc: dict[int, torch.Tensor]  # tensor index -> float32 running sum (floating tensors only)


class _Swap:
    """Returned by `swap_in()`; as a context manager it swaps the live weights back on exit."""

    def __init__(self, averager: OnlineAverager) -> None:
        self._averager = averager

    def __enter__(self) -> OnlineAverager:
        return self._averager

    def __exit__(self, *exc: object) -> None:
        self._averager.swap_out()


class OnlineAverager:
    """Running SMA / WMA / EMA merges of a model's weights during training.

    Call `step(global_step)` after every optimizer step (and once before training with the
    starting step, so a window that begins there sees it). Memory: one float32 copy of the
    (local) weights per open window, plus the latest merge.

    >>> avg = OnlineAverager(model, method="sma", n=4, interval=5, every=20)  # doctest: +SKIP
    >>> if avg.step(step):                                                      # doctest: +SKIP
    ...     with avg.swap_in():
    ...         evaluate(model)
    """

    def __init__(
        self,
        model_or_params: nn.Module
        | Mapping[str, torch.Tensor]
        | Iterable[tuple[str, torch.Tensor]],
        *,
        method: Method = "sma",
        n: int = 10,
        interval: int = 10,
        every: int | None = None,
        alpha: float | None = None,
        start_step: int = 0,
        device: Device = "cpu",
        config: OnlineAverageConfig | None = None,
    ) -> None:
        if config is None:
            config = OnlineAverageConfig(
                method=method,
                n=n,
                interval=interval,
                every=every,
                alpha=alpha,
                start_step=start_step,
                device=device,
            )
        self.config = config
        self._weights = config.weights
        items = tracked_tensors(model_or_params)
        self.names = [n for n, _ in items]
        self._tensors = [t for _, t in items]
        self._is_float = [t.is_floating_point() for t in self._tensors]
        self._windows: dict[int, _Window] = {}
        self._last_step: int | None = None
        self._merged: list[torch.Tensor] | None = None
        self._merged_step: int | None = None
        self._backup: list[torch.Tensor] | None = None
        self._dropped: set[int] = set()  # merge points already warned about

    # -- schedule ---------------------------------------------------------------------------

    @property
    def merged_step(self) -> int | None:
        """Merge point of the latest completed merge, or None before the first."""
        return self._merged_step

    @property
    def last_step(self) -> int | None:
        """The last step passed to `step()`."""
        return self._last_step

    @property
    def open_windows(self) -> list[int]:
        """Merge points of the windows that have started and not yet completed."""
        return sorted(self._windows)

    def next_merge_step(self) -> int:
        """The next scheduled merge point."""
        after = self._last_step if self._last_step is not None else self.config.start_step - 1
        return next_merge_step(after, self.config)

    def _dev(self, t: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self.config.device == "cpu" else t.device

    def step(self, global_step: int) -> bool:
        """Take the snapshots due at `global_step`; True when a merge completed at this step."""
        if self._backup is not None:
            raise RuntimeError("step() while merged weights are swapped in; call swap_out() first")
        if isinstance(global_step, bool) or not isinstance(global_step, int) or global_step < 0:
            raise ValueError(f"global_step: must be an integer >= 0, got {global_step!r}")
        last = self._last_step
        if last is not None and global_step <= last:
            # The same step twice is a no-op: a resumed trainer reports its step again at start.
            if global_step == last:
                return False
            raise ValueError(
                f"global_step went back from {last} to {global_step}; "
                "to resume a run, load_state_dict() the averager state saved with its checkpoint"
            )
        self._last_step = global_step
        cfg = self.config
        for p, w in list(self._windows.items()):
            expected = window_steps(p, cfg.n, cfg.interval)[w.next_index]
            if expected < global_step:
                del self._windows[p]
                self._dropped.add(p)
                warnings.warn(
                    f"OnlineAverager: dropped the merge at step {p}: its snapshot at step {expected} "
                    f"was never observed (step jumped to {global_step})",
                    RuntimeWarning,
                    stacklevel=2,
                )
        folds: list[tuple[_Window, int]] = []
        for p, i in windows_at(global_step, cfg):
            if i == 0:
                self._windows[p] = _Window(p, 0, {})
            elif p not in self._windows:
                if i == cfg.n - 1 and p not in self._dropped:
                    warnings.warn(
                        f"OnlineAverager: skipped the merge at step {p}: its first snapshot "
                        f"(step {window_steps(p, cfg.n, cfg.interval)[0]}) was not observed",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                continue
            folds.append((self._windows[p], i))
        self._dropped.discard(global_step)
        if not folds:
            return False
        self._fold(folds)
        done = self._windows.pop(global_step, None)
        if done is None:
            return False
        self._finish(done)
        return True

    @torch.no_grad()
    def _fold(self, folds: list[tuple[_Window, int]]) -> None:
        """acc += w_i * theta for every window due now; theta is read and cast once per tensor."""
        last_index = self.config.n - 1
        for k, t in enumerate(self._tensors):
            local = local_shard(t).detach()
            if not self._is_float[k]:
                # Integer buffers and step counters: the newest wins, never averaged (docs/design.md).
                for w, i in folds:
                    if i == last_index:
                        w.acc[k] = local.to(self._dev(t), copy=True)
                continue
            x = local.to(device=self._dev(t), dtype=torch.float32)  # (local shard shape)
            for w, i in folds:
                if i == 0:
                    w.acc[k] = torch.empty_like(x)
                # fl(w * x) then the add, never fused: the offline merges' bits (pma.arithmetic)
                fold(w.acc[k], x, self._weights[i], first=i == 0)
        for w, i in folds:
            if w.next_index != i:  # unreachable unless the schedule arithmetic is wrong
                raise AssertionError(
                    f"window {w.merge_step}: folded snapshot {i}, expected {w.next_index}"
                )
            w.next_index = i + 1

    def _finish(self, window: _Window) -> None:
        self._merged = [window.acc[k] for k in range(len(self._tensors))]
        self._merged_step = window.merge_step

    # -- results ----------------------------------------------------------------------------

    def _require_merged(self) -> list[torch.Tensor]:
        if self._merged is None:
            raise RuntimeError(
                f"no merge has completed yet; the next merge point is step {self.next_merge_step()}"
            )
        return self._merged

    @property
    def tracked(self) -> list[tuple[str, torch.Tensor]]:
        """(name, live tensor) pairs the averager follows, in order (DTensors stay DTensors)."""
        return list(zip(self.names, self._tensors, strict=True))

    def merged_items(
        self, *, dtype: torch.dtype | None = None
    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, live tensor, merged local tensor), one tensor at a time.

        The merged tensor is this rank's shard, in the live dtype (or `dtype` for floating ones);
        it may be the accumulator itself: read it, do not modify it. Writers walk this to save a
        merge without building it whole (`pmalopti.pma.dcp_online`).
        """
        merged = self._require_merged()
        for name, t, m in zip(self.names, self._tensors, merged, strict=True):
            yield (
                name,
                t,
                m.to(dtype=dtype if dtype is not None and m.is_floating_point() else t.dtype),
            )

    def merged_state_dict(
        self, *, dtype: torch.dtype | None = None, full: bool = False
    ) -> dict[str, torch.Tensor]:
        """The latest merge as new tensors, named like the model.

        Floating tensors come back in their live dtype (or `dtype`, e.g. torch.float32 for the raw
        accumulator). DTensor parameters come back as local shards, or, with `full=True`, as
        whole tensors gathered on every rank (a collective, and the whole model on each rank: to
        write a merge of a sharded model use `pmalopti.pma.dcp_online` instead).
        """
        out = {}
        items = zip(self.merged_items(dtype=dtype), self._require_merged(), strict=True)
        for (name, t, v), acc in items:
            v = v.clone() if v is acc else v  # new tensors, never the accumulator itself
            if full and DTensor is not None and isinstance(t, DTensor):
                v = DTensor.from_local(
                    v.to(t.device), t.device_mesh, t.placements, shape=t.shape, stride=t.stride()
                ).full_tensor()
                v = v.to(self._dev(t))  # whole tensors go where the accumulators live
            out[name] = v
        return out

    @torch.no_grad()
    def swap_in(self) -> _Swap:
        """Put the latest merge into the model (live weights kept aside); usable as `with`."""
        merged = self._require_merged()
        if self._backup is not None:
            raise RuntimeError("merged weights are already swapped in")
        locals_ = [local_shard(t) for t in self._tensors]
        self._backup = [
            x.detach().to(self._dev(t), copy=True)
            for x, t in zip(locals_, self._tensors, strict=True)
        ]
        for x, m in zip(locals_, merged, strict=True):
            x.copy_(m)
        return _Swap(self)

    @torch.no_grad()
    def swap_out(self) -> None:
        """Restore the live weights bit for bit."""
        if self._backup is None:
            raise RuntimeError("swap_out() without swap_in()")
        for t, b in zip(self._tensors, self._backup, strict=True):
            local_shard(t).copy_(b)
        self._backup = None

    @property
    def swapped_in(self) -> bool:
        return self._backup is not None

    # -- resume -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Schedule, open windows and latest merge, for `torch.save` / `torch.load(weights_only=True)`.

        Like `nn.Module.state_dict()`, the tensors are the live accumulators, not copies.
        """
        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "names": list(self.names),
            "last_step": self._last_step,
            "windows": [
                {
                    "merge_step": w.merge_step,
                    "next_index": w.next_index,
                    "acc": {self.names[k]: v for k, v in w.acc.items()},
                }
                for w in self._windows.values()
            ],
            "merged_step": self._merged_step,
            "merged": {}
            if self._merged is None
            else dict(zip(self.names, self._merged, strict=True)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by `state_dict()`; the schedule and tensors must match."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"averager state: not a {STATE_FORMAT} state dict")
        saved = state["config"]
        mine = dataclasses.asdict(self.config)
        for key in ("method", "n", "interval", "every", "alpha", "start_step"):
            if saved.get(key) != mine[key]:
                raise ValueError(
                    f"averager state: {key} is {saved.get(key)!r} in the saved state but "
                    f"{mine[key]!r} here; resume with the same schedule"
                )
        if list(state["names"]) != self.names:
            missing = sorted(set(self.names) ^ set(state["names"]))[:5]
            raise ValueError(
                f"averager state: tensor names differ from this model's (e.g. {missing})"
            )
        index = {name: k for k, name in enumerate(self.names)}

        def restore(name: str, v: torch.Tensor, where: str) -> torch.Tensor:
            t = self._tensors[index[name]]
            local = local_shard(t)
            if tuple(v.shape) != tuple(local.shape):
                raise ValueError(
                    f"averager state: {where} {name!r} has shape {tuple(v.shape)}, the model's "
                    f"(local) tensor {tuple(local.shape)}; resume with the same sharding"
                )
            return v.to(self._dev(t))

        windows = {}
        for w in state["windows"]:
            acc = {
                index[n]: restore(n, v, f"window {w['merge_step']}") for n, v in w["acc"].items()
            }
            windows[int(w["merge_step"])] = _Window(int(w["merge_step"]), int(w["next_index"]), acc)
        merged = None
        if state["merged_step"] is not None:
            merged = [restore(n, state["merged"][n], "merge") for n in self.names]
        self._windows = windows
        self._merged = merged
        self._merged_step = state["merged_step"]
        self._last_step = state["last_step"]
