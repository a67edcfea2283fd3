"""A run's metrics: `RUN/metrics.jsonl`, optionally mirrored to TensorBoard or Weights & Biases.

One JSON object per logged step; `report_to: tensorboard` writes `RUN/tb/`, `report_to: wandb`
logs to W&B (an optional dependency, imported only then).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

from pmalopti.errors import UserError
from pmalopti.runtime.fs import atomic_write_text, iter_jsonl

log = logging.getLogger(__name__)

ReportTo = Literal["none", "tensorboard", "wandb"]
METRICS = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
LEGACY_METRICS = ("log.jsonl",)  # GRPO runs written before the name was shared


def metrics_path(run_dir: str | Path) -> Path:
    """The run's metrics file (`metrics.jsonl`; an older GRPO run's `log.jsonl` if only it exists)."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS).is_file():
        for name in LEGACY_METRICS:
            if (run_dir / name).is_file():
                return run_dir / name
    return run_dir / METRICS


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics file, or of a run folder's metrics file."""
    path = Path(path)
    if path.is_dir():
        path = metrics_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics log {path} does not exist")
    return [row for _, row in iter_jsonl(path, f"metrics log {path}", objects=True)]


class RunLog:
    """Appends step records to `metrics.jsonl` and mirrors numbers to the `report_to` backend.

    `resume_step=None` starts a fresh file; an integer keeps only the lines up to that step (a
    crash may have logged steps after the checkpoint being resumed).
    """

    def __init__(
        self,
        run_dir: str | Path,
        report_to: ReportTo = "none",
        *,
        resume_step: int | None = None,
        config: dict | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self._tb = self._wandb = None
        if report_to == "tensorboard":
            self._tb = _tensorboard(self.run_dir / TENSORBOARD_DIR)
        elif report_to == "wandb":
            self._wandb = _wandb_run(self.run_dir, config)

    def _truncate(self, last_step: int) -> None:
        src = metrics_path(self.run_dir)
        keep = (
            [r for r in read_metrics(src) if r.get("step", 0) <= last_step] if src.is_file() else []
        )
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        if src != self.path:
            src.unlink()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = int(record.get("step", 0))
        scalars = {
            k: float(v)
            for k, v in record.items()
            if k != "step"
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "report_to: tensorboard needs the tensorboard package (pip install tensorboard)"
        ) from None
    return SummaryWriter(str(folder))


def _wandb_run(run_dir: Path, config: dict | None):
    try:
        import wandb
    except ImportError:
        raise UserError("report_to: wandb needs the wandb package (pip install wandb)") from None
    return wandb.init(
        project="pmalopti", name=run_dir.name, dir=str(run_dir), config=config, resume="allow"
    )
