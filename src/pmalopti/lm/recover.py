"""Loss-spike recovery with PMA-init (arXiv 2505.12082, Sec. 4.4): the orchestration.

Find the spike in a run's metrics.jsonl, merge the N checkpoints saved before it, and optionally
continue training from the merged weights. Spike detection and the rule for which checkpoints
count as before the spike (steps <= S - 2) are pure functions in `pmalopti.pma.spike`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from pmalopti.lm.inject import InjectSpikeConfig
from pmalopti.pma.spec import MergeSpec
from pmalopti.pma.spike import Spike, checkpoints_before, spike_from_log
from pmalopti.runtime.checkpoint import load_state

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Recovery:
    spike_step: int
    spike: Spike | None
    """the detected spike (None when --spike-step was given)"""
    merged: list[tuple[int, Path]]
    weights: list[float]
    out: Path
    notes: list[str] = dataclasses.field(default_factory=list)
    """warnings about the selection (schedule phase, uneven spacing)"""


def merge_before_spike(
    run_dir: str | Path,
    out: str | Path,
    *,
    last: int,
    spike_step: int | None = None,
    factor: float = 2.0,
    window: int = 20,
    after: int | None = None,
    method: MergeSpec | str = "sma",
    force: bool = False,
) -> Recovery:
    """Detect (or take) the spike step, merge the `last` checkpoints before it into `out`."""
    from pmalopti.pma.select import discover_checkpoints, phase_notes, stable_steps
    from pmalopti.pma.streaming import merge_checkpoints

    spec = method if isinstance(method, MergeSpec) else MergeSpec.parse(method)
    run_dir = Path(run_dir)
    spike = None
    if spike_step is None:
        spike = spike_from_log(run_dir, factor=factor, window=window, after=after)
        spike_step = spike.step
    sel = checkpoints_before(discover_checkpoints(run_dir), spike_step, last)
    chosen = [(c.step, c.path) for c in sel.checkpoints]
    weights = spec.merge_weights(len(chosen))
    merge_checkpoints(
        sel.checkpoints,
        weights,
        out,
        force=force,
        progress=False,
        metadata={
            "method": str(spec),
            "purpose": "loss-spike recovery (PMA-init)",
            "spike_step": spike_step,
            "spike_rule": spike.rule if spike else "given with --spike-step",
        },
    )
    notes = sel.notes + phase_notes(sel.checkpoints, stable_steps(run_dir))
    return Recovery(
        spike_step=spike_step,
        spike=spike,
        merged=chosen,  # type: ignore[arg-type]
        weights=weights,
        out=Path(out),
        notes=notes,
    )


def resume_from_merge(
    rec: Recovery,
    run_dir: str | Path,
    resume_dir: str | Path,
    *,
    optimizer: str = "fresh",
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
):
    """Continue the run from the merged weights at the newest merged checkpoint's step.

    `optimizer="fresh"` is PMA-init as in the paper (new AdamW state); "newest" reuses the
    optimizer state of the newest merged checkpoint. `config` replaces RUN/config.yaml, and
    `overrides` (`--set`) apply on top. A spike injected with `train.inject_spike` in the
    run's config is not replayed (the continuation trains clean); one given in `overrides` is.
    """
    import json

    from pmalopti.config import load_config
    from pmalopti.lm.pretrain import PretrainConfig, continue_run

    run_dir = Path(run_dir)
    source = config or run_dir / "config.yaml"
    cfg = load_config(PretrainConfig, source, list(overrides))
    step, newest = rec.merged[-1]
    inject = cfg.train.inject_spike
    replayed = inject.enabled and inject.last > step
    if replayed and inject == load_config(PretrainConfig, source).train.inject_spike:
        # The recovery is tested against the spike, not re-exposed to it: the continuation
        # trains clean (its config.yaml records inject_spike off); one set with --set is kept.
        log.warning(
            "the continuation does not replay the injected spike of steps %d-%d",
            inject.step,
            inject.last,
        )
        cfg.train.inject_spike = InjectSpikeConfig()
    state = json.loads((newest / "trainer_state.json").read_text(encoding="utf-8"))
    opt_state = None
    if optimizer == "newest":
        opt_state = load_state(newest)["optimizer"]
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
