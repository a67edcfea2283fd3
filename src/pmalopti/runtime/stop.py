"""How a training run stops early: Ctrl-C (gracefully, resumable) or a non-finite loss (loudly).

First Ctrl-C: the trainer finishes the current step, writes a resumable checkpoint and stops.
A second Ctrl-C stops at once. A NaN/inf loss, gradient norm or weight stops the run before
anything non-finite is saved: the newest checkpoint on disk stays the last good one, and the
error (a `UserError`, printed by the CLI as one line, exit code 2) names the step.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from pmalopti.errors import UserError


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after writing a resumable checkpoint."""


class TrainingDiverged(UserError):
    """A non-finite loss, gradient norm or weight: the run stopped without saving it."""


class StopOnSigint:
    """Context manager: `requested` turns true on the first Ctrl-C; the second one aborts.

    Installs its handler only on the main thread (signals are delivered there).
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        from tqdm.auto import tqdm

        tqdm.write(
            "pmalopti: stopping after this step and writing a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def _last_good(last_checkpoint: Path | None) -> str:
    if last_checkpoint is None:
        return "no checkpoint was written before it"
    return f"the last good checkpoint is {last_checkpoint}"


def check_finite(step: int, values: dict[str, float], last_checkpoint: Path | None) -> None:
    """Raise TrainingDiverged naming `step` if any of `values` (loss, grad norm) is NaN or inf."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise TrainingDiverged(
            f"training diverged at step {step}: {what}; stopped without saving it "
            f"({_last_good(last_checkpoint)}; lower optim.lr or check the data)"
        )


def check_finite_weights(model, step: int, last_checkpoint: Path | None) -> None:
    """Raise TrainingDiverged if any parameter holds NaN or inf (checked before each save)."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise TrainingDiverged(
                f"training diverged at step {step}: parameter {name} is not finite; "
                f"stopped without saving it ({_last_good(last_checkpoint)})"
            )
