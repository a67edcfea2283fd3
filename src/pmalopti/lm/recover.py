"""Loss-spike recovery with PMA-init (arXiv 2505.12082, Sec. 4.4).

Find the spike in a run's metrics.jsonl, merge the N checkpoints saved before it, and optionally
continue training from the merged weights.

Step bookkeeping: the loss logged at step s is measured on the weights after s - 1 updates, so
`checkpoint-(s-1)` holds the weights that *produced* the spiking loss. A checkpoint at step k
counts as "before the spike" when k + 1 < s (its own loss was logged before the spike).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from pmalopti.lm.loop import list_checkpoints, read_metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass
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
            f"loss spike at step {self.step}: loss {self.loss:.4g} = {ratio:.2f} x the rolling median "
            f"{self.median:.4g} (rule: {self.rule})"
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


def spike_from_log(run_dir: Path, *, factor: float, window: int, after: int | None = None) -> Spike:
    """The spike in RUN/metrics.jsonl; `after` defaults to the run's warmup length."""
    if after is None:
        after = _warmup_steps(Path(run_dir))
    log_file = Path(run_dir) / "metrics.jsonl"
    steps, losses = [], []
    for i, r in enumerate(read_metrics(log_file), 1):
        if not isinstance(r, dict) or "loss" not in r:
            continue
        step, loss = r.get("step"), r["loss"]
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(
                f"{log_file}: record {i}: field 'step' is {step!r:.40}, not an integer"
            )
        if loss is None:  # json has no NaN in strict writers: null stands for it
            loss = math.nan
        if not isinstance(loss, int | float) or isinstance(loss, bool):
            raise ValueError(f"{log_file}: record {i}: field 'loss' is {loss!r:.40}, not a number")
        steps.append(step)
        losses.append(float(loss))
    if not steps:
        raise ValueError(f"{log_file} has no loss values")
    spike = find_spike(
        steps,
        losses,
        factor=factor,
        window=window,
        after=after,
    )
    if spike is None:
        raise ValueError(
            f"no loss spike in {run_dir}/metrics.jsonl by the rule loss > {factor:g} x median of the previous "
            f"{window} losses after step {after}; lower --factor or give --spike-step"
        )
    return spike


def _warmup_steps(run_dir: Path) -> int:
    import yaml

    f = run_dir / "config.yaml"
    if not f.is_file():
        return 0
    try:
        cfg = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{f}: not valid YAML ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{f}: not a YAML mapping of config sections")
    sched = cfg.get("schedule")
    warmup = (sched or {}).get("warmup_steps", 0) if isinstance(sched, dict | None) else None
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"{f}: field 'schedule.warmup_steps' is {warmup!r:.40}, not a step count")
    return warmup


def checkpoints_before(run_dir: Path, spike_step: int, last: int) -> list[tuple[int, Path]]:
    """The `last` newest checkpoints whose weights were measured before the spike (oldest first)."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"run folder {run_dir} has no checkpoint-* folders")
    if last < 1:
        raise ValueError(f"--last must be >= 1, got {last}")
    before = [(s, p) for s, p in ckpts if s + 1 < spike_step]
    if not before:
        raise ValueError(
            f"spike step {spike_step} is before the first usable checkpoint "
            f"(the first is checkpoint-{ckpts[0][0]}; a checkpoint at step k needs k + 1 < spike step)"
        )
    if last > len(before):
        raise ValueError(
            f"--last {last} but only {len(before)} checkpoints were saved before the spike at step "
            f"{spike_step}: steps {[s for s, _ in before]}"
        )
    return before[-last:]


@dataclasses.dataclass
class Recovery:
    spike_step: int
    spike: Spike | None
    """the detected spike (None when --spike-step was given)"""
    merged: list[tuple[int, Path]]
    weights: list[float]
    out: Path


def merge_before_spike(
    run_dir: str | Path,
    out: str | Path,
    *,
    last: int,
    spike_step: int | None = None,
    factor: float = 2.0,
    window: int = 20,
    after: int | None = None,
    method: str = "sma",
    force: bool = False,
) -> Recovery:
    """Detect (or take) the spike step, merge the `last` checkpoints before it into `out`."""
    from pmalopti.lm.evaluate import method_weights
    from pmalopti.pma.streaming import merge_checkpoints

    run_dir = Path(run_dir)
    spike = None
    if spike_step is None:
        spike = spike_from_log(run_dir, factor=factor, window=window, after=after)
        spike_step = spike.step
    chosen = checkpoints_before(run_dir, spike_step, last)
    weights = method_weights(method, len(chosen))
    merge_checkpoints(
        [p for _, p in chosen],
        weights,
        out,
        force=force,
        progress=False,
        metadata={
            "method": method,
            "purpose": "loss-spike recovery (PMA-init)",
            "spike_step": spike_step,
            "spike_rule": spike.rule if spike else "given with --spike-step",
        },
    )
    return Recovery(
        spike_step=spike_step, spike=spike, merged=chosen, weights=weights, out=Path(out)
    )


def resume_from_merge(
    rec: Recovery,
    run_dir: str | Path,
    resume_dir: str | Path,
    *,
    optimizer: str = "fresh",
    overrides: Sequence[str] = (),
    force: bool = False,
):
    """Continue the run from the merged weights at the newest merged checkpoint's step.

    `optimizer="fresh"` is PMA-init as in the paper (new AdamW state); "newest" reuses the
    optimizer state of the newest merged checkpoint.
    """
    import json

    from pmalopti.config import load_config
    from pmalopti.lm.loop import load_training_state
    from pmalopti.lm.pretrain import PretrainConfig, continue_run

    run_dir = Path(run_dir)
    cfg = load_config(PretrainConfig, run_dir / "config.yaml", list(overrides))
    step, newest = rec.merged[-1]
    state = json.loads((newest / "trainer_state.json").read_text(encoding="utf-8"))
    opt_state = None
    if optimizer == "newest":
        opt_state = load_training_state(newest)["optimizer"]
    elif optimizer != "fresh":
        raise ValueError(f"--optimizer {optimizer!r}: choose fresh or newest")
    return continue_run(
        cfg,
        run_dir,
        resume_dir,
        init=rec.out,
        step=step,
        tokens=int(state.get("num_input_tokens_seen", 0)),
        optimizer_state=opt_state,
        force=force,
    )
