"""Warmup-Stable-Decay (WSD) learning-rate schedule as a pure function of the step.

PMA (arXiv 2505.12082, Sec. 2 and 4.1) merges checkpoints from the constant-LR ("stable") phase and
compares the merge with what the decay ("annealing") phase would give, so the schedule has three
explicit phases: linear warmup to the peak LR, constant, then a decay of configurable length and
shape down to `min_lr_ratio * peak`.
"""

from __future__ import annotations

import math
from typing import Literal

DecayShape = Literal["linear", "cosine", "sqrt", "exp"]
Phase = Literal["warmup", "stable", "decay"]
DECAY_SHAPES: tuple[DecayShape, ...] = ("linear", "cosine", "sqrt", "exp")


def _check(total_steps: int, warmup_steps: int, decay_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0 or decay_steps < 0:
        raise ValueError(
            f"warmup_steps and decay_steps must be >= 0, got {warmup_steps}, {decay_steps}"
        )
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) + decay_steps ({decay_steps}) exceed "
            f"total_steps ({total_steps})"
        )


def decay_factor(progress: float, shape: DecayShape, min_ratio: float) -> float:
    """LR multiplier at `progress` in [0, 1] through the decay phase: 1 at 0, `min_ratio` at 1."""
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        f = 1.0 - p
    elif shape == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    elif shape == "sqrt":
        # "1 - sqrt" cooldown (Hägele et al. 2024), a common WSD choice.
        f = 1.0 - math.sqrt(p)
    elif shape == "exp":
        # Geometric interpolation from 1 to min_ratio (needs min_ratio > 0).
        if min_ratio <= 0:
            raise ValueError("decay shape 'exp' needs min_lr_ratio > 0")
        return min_ratio**p
    else:
        raise ValueError(
            f"decay shape {shape!r} is not allowed; choose one of {list(DECAY_SHAPES)}"
        )
    return min_ratio + (1.0 - min_ratio) * f


def wsd_phase(step: int, *, total_steps: int, warmup_steps: int, decay_steps: int) -> Phase:
    """Which phase the optimizer update number `step` (0-based) belongs to."""
    _check(total_steps, warmup_steps, decay_steps)
    if step < warmup_steps:
        return "warmup"
    if step < total_steps - decay_steps:
        return "stable"
    return "decay"


def wsd_lr(
    step: int,
    *,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int,
    decay_steps: int,
    shape: DecayShape = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for the optimizer update number `step` (0-based, `0 <= step < total_steps`).

    Warmup: `peak * (step + 1) / warmup_steps` (the first update already has a non-zero LR).
    Stable: `peak`. Decay over the last `decay_steps` updates: the first decay update is still
    at the peak and the last one reaches `min_lr_ratio * peak`.
    """
    phase = wsd_phase(
        step, total_steps=total_steps, warmup_steps=warmup_steps, decay_steps=decay_steps
    )
    if phase == "warmup":
        return peak_lr * (step + 1) / warmup_steps
    if phase == "stable":
        return peak_lr
    start = total_steps - decay_steps
    progress = (step - start) / max(decay_steps - 1, 1) if decay_steps > 1 else 1.0
    return peak_lr * decay_factor(progress, shape, min_lr_ratio)


def stable_range(total_steps: int, warmup_steps: int, decay_steps: int) -> tuple[int, int]:
    """Completed-step counts `(first, last)` whose checkpoints lie in the constant-LR phase.

    A checkpoint saved after `s` updates was trained only with warmup/stable LRs when
    `warmup_steps <= s <= total_steps - decay_steps`.
    """
    _check(total_steps, warmup_steps, decay_steps)
    return warmup_steps, total_steps - decay_steps
