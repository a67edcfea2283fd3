"""The configs of the language-model loop (`pmalopti pretrain`, `sft`): AdamW, WSD, the loop."""

from __future__ import annotations

import dataclasses

from pmalopti.config import THREADS, bounded
from pmalopti.lm.inject import InjectSpikeConfig
from pmalopti.lm.schedule import DecayShape
from pmalopti.runtime.device import Device, Precision, canonical_precision
from pmalopti.runtime.runlog import ReportTo


@dataclasses.dataclass
class OptimConfig:
    lr: float = bounded(3e-3, gt=0)
    """peak learning rate (the constant LR of the stable phase)"""
    weight_decay: float = bounded(0.1, ge=0)
    """AdamW decoupled weight decay"""
    beta1: float = bounded(0.9, ge=0, lt=1)
    """AdamW beta1"""
    beta2: float = bounded(0.95, ge=0, lt=1)
    """AdamW beta2"""
    eps: float = bounded(1e-8, gt=0)
    """AdamW epsilon"""
    grad_clip: float = bounded(1.0, ge=0)
    """clip the global gradient norm to this value (0 disables clipping)"""


@dataclasses.dataclass
class ScheduleConfig:
    warmup_steps: int = bounded(50, ge=0)
    """linear warmup length in optimizer steps"""
    decay_steps: int = bounded(0, ge=0)
    """length of the final decay (annealing) phase in optimizer steps; 0 = constant to the end"""
    decay_shape: DecayShape = "linear"
    """shape of the decay: linear, cosine, sqrt (1 - sqrt) or exp (geometric)"""
    min_lr_ratio: float = bounded(0.0, ge=0, le=1)
    """LR at the end of the decay as a fraction of the peak"""

    def __post_init__(self):
        if self.decay_shape == "exp" and self.min_lr_ratio <= 0:
            raise ValueError("schedule.min_lr_ratio must be > 0 with decay_shape exp")


@dataclasses.dataclass
class TrainConfig:
    steps: int = bounded(1000, ge=1)
    """total optimizer steps (the schedule spans them)"""
    batch_size: int = bounded(16, ge=1)
    """sequences per micro-batch"""
    grad_accum: int = bounded(1, ge=1)
    """micro-batches per optimizer step"""
    device: Device = "auto"
    """auto = CUDA when available, else CPU"""
    dtype: Precision = "auto"
    """compute precision: auto = bf16 autocast on CUDA, float32 on CPU (weights stay float32);
    none is the old spelling of float32"""
    save_every: int = bounded(100, ge=1)
    """write checkpoint-<step> every this many steps (and at the last step)"""
    eval_every: int = bounded(100, ge=0)
    """validation loss every this many steps (and at the last step); 0 disables"""
    log_every: int = bounded(1, ge=1)
    """append a metrics.jsonl line every this many steps"""
    threads: int = bounded(0, **THREADS)
    """CPU threads for torch (0 = auto: $PMALOPTI_THREADS, else one fewer than the usable cores)"""
    report_to: ReportTo = "none"
    """mirror metrics.jsonl to TensorBoard (RUN/tb) or Weights & Biases"""
    tensorboard: bool = False
    """old spelling of report_to: tensorboard"""
    progress: bool = True
    """show a progress bar on stderr"""
    inject_spike: InjectSpikeConfig = dataclasses.field(default_factory=InjectSpikeConfig)
    """disturb chosen steps on purpose (LR x factor, random-token batches) to test loss-spike
    recovery (docs/training.md); off by default"""

    def __post_init__(self):
        if self.inject_spike.step > self.steps:
            raise ValueError(
                f"inject_spike.step {self.inject_spike.step} is after the last step "
                f"(steps {self.steps})"
            )
        self.dtype = canonical_precision(self.dtype)  # type: ignore[assignment]
        if self.tensorboard:
            self.report_to, self.tensorboard = "tensorboard", False
