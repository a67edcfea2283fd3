"""Loss spikes, and which checkpoints count as before one (PMA for recovery, arXiv 2505.12082 Sec. 4.4).

The one rule about the spiking step, shared by `pmalopti merge --before-spike S` and
`pmalopti recover`: the loss logged at step S is measured on the weights after S - 1 updates,
so `checkpoint-(S-1)` holds the weights that produced the spiking loss. The checkpoints before
the spike are those at steps k <= S - 2, i.e. `--until S-2` (`--until` always includes its step).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pmalopti.pma.select import Checkpoint, Selection, select_checkpoints, stable_steps
from pmalopti.runtime.fs import iter_jsonl


def until_before_spike(spike_step: int) -> int:
    """The newest step whose checkpoint counts as before a spike logged at `spike_step`."""
    if spike_step < 2:
        raise ValueError(f"a spike at step {spike_step} has no checkpoint before it")
    return spike_step - 2


@dataclass
class Spike:
    step: int
    loss: float
    median: float
    factor: float
    window: int
    after: int = 0

    @property
    def rule(self) -> str:
        return f"loss > {self.factor:g} x median of the previous {self.window} logged losses" + (
            f", after step {self.after}" if self.after else ""
        )

    def describe(self) -> str:
        if not math.isfinite(self.loss):
            return f"non-finite loss {self.loss} at step {self.step} (the run diverged)"
        ratio = (
            self.loss / self.median if self.median > 0 and math.isfinite(self.loss) else math.inf
        )
        return (
            f"loss spike at step {self.step}: loss {self.loss:.4g} = {ratio:.2f} x the rolling "
            f"median {self.median:.4g} (rule: {self.rule})"
        )


def find_spike(
    steps: Sequence[int],
    losses: Sequence[float],
    *,
    factor: float = 2.0,
    window: int = 20,
    min_history: int = 5,
    after: int = 0,
) -> Spike | None:
    """The first step after `after` whose loss exceeds `factor` x the median of up to `window`
    previous losses.

    `after` is usually the warmup length: loss bumps while the LR is still rising are transients
    of the warmup, not the spikes of the constant-LR phase that PMA recovery is for.

    A non-finite loss (NaN/inf) is a spike at once, even with no history (an all-NaN run) or
    during the warmup. Otherwise needs `min_history` earlier losses before judging, so
    the fast early descent is never mistaken for a spike (a falling loss cannot exceed its median
    anyway, but a median of one point is too noisy).
    """
    if factor <= 1:
        raise ValueError(f"spike factor must be > 1, got {factor}")
    if window < 1 or min_history < 1:
        raise ValueError("spike window and min_history must be >= 1")
    history: list[float] = []
    for s, x in zip(steps, losses, strict=True):
        if not math.isfinite(x):  # NaN/inf is a divergence wherever it happens, warmup included
            med = statistics.median(history[-window:]) if history else math.nan
            return Spike(int(s), float(x), med, factor, window, after)
        if s > after and len(history) >= min_history:
            med = statistics.median(history[-window:])
            if x > factor * med:
                return Spike(int(s), float(x), med, factor, window, after)
        if math.isfinite(x):
            history.append(float(x))
    return None


def read_losses(metrics_file: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of the rows of a metrics.jsonl that log a loss."""
    steps, losses = [], []
    try:
        rows = list(iter_jsonl(metrics_file))
    except OSError as exc:
        raise FileNotFoundError(f"{metrics_file}: cannot read ({exc.strerror or exc})") from exc
    for i, row in rows:
        if isinstance(row, dict) and "loss" in row:
            step, loss = row.get("step"), row["loss"]
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError(
                    f"{metrics_file}:{i}: field 'step' is {step!r:.40}, not an integer"
                )
            if loss is None:  # strict JSON writers have no NaN: null stands for it
                loss = math.nan
            if not isinstance(loss, int | float) or isinstance(loss, bool):
                raise ValueError(f"{metrics_file}:{i}: field 'loss' is {loss!r:.40}, not a number")
            steps.append(step)
            losses.append(float(loss))
    return steps, losses


def spike_from_log(
    run_dir: str | Path, *, factor: float = 2.0, window: int = 20, after: int | None = None
) -> Spike:
    """The spike in RUN/metrics.jsonl; `after` defaults to the end of the run's warmup."""
    run_dir = Path(run_dir)
    if after is None:
        stable = stable_steps(run_dir)
        after = stable[0] if stable else 0
    steps, losses = read_losses(run_dir / "metrics.jsonl")
    if not steps:
        raise ValueError(f"{run_dir}/metrics.jsonl has no loss values")
    spike = find_spike(steps, losses, factor=factor, window=window, after=after)
    if spike is None:
        raise ValueError(
            f"no loss spike in {run_dir}/metrics.jsonl by the rule loss > {factor:g} x median of "
            f"the previous {window} losses after step {after}; lower --factor or give --spike-step"
        )
    return spike


def checkpoints_before(
    ckpts: Sequence[Checkpoint], spike_step: int, last: int, **spacing
) -> Selection:
    """The `last` newest checkpoints before the spike (steps <= `until_before_spike`), oldest
    first; `spacing` (every_steps=, every_tokens=, nearest=) as in `select_checkpoints`."""
    until = until_before_spike(spike_step)
    try:
        return select_checkpoints(ckpts, last=last, until=until, **spacing)
    except ValueError as exc:
        raise ValueError(
            f"spike at step {spike_step} (checkpoints at steps <= {until} count as before it): {exc}"
        ) from None
