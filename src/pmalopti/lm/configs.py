"""The configs of the language-model loop (`pmalopti pretrain`, `sft`): AdamW, WSD, the loop."""

from __future__ import annotations

import dataclasses
import math

from pmalopti.lm.schedule import DecayShape
from pmalopti.runtime.device import MAX_THREADS, Device, Precision, canonical_precision
from pmalopti.runtime.runlog import ReportTo


@dataclasses.dataclass
class OptimConfig:
    lr: float = 3e-3
    """peak learning rate (the constant LR of the stable phase)"""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    eps: float = 1e-8
    """AdamW epsilon"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this value (0 disables clipping)"""

    def __post_init__(self):
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optim.lr must be finite and > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")


@dataclasses.dataclass
class ScheduleConfig:
    warmup_steps: int = 50
    """linear warmup length in optimizer steps"""
    decay_steps: int = 0
    """length of the final decay (annealing) phase in optimizer steps; 0 = constant to the end"""
    decay_shape: DecayShape = "linear"
    """shape of the decay: linear, cosine, sqrt (1 - sqrt) or exp (geometric)"""
    min_lr_ratio: float = 0.0
    """LR at the end of the decay as a fraction of the peak"""

    def __post_init__(self):
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError("schedule.warmup_steps and schedule.decay_steps must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.decay_shape == "exp" and self.min_lr_ratio <= 0:
            raise ValueError("schedule.min_lr_ratio must be > 0 with decay_shape exp")


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1000
    """total optimizer steps (the schedule spans them)"""
    batch_size: int = 16
    """sequences per micro-batch"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    device: Device = "auto"
    """auto = CUDA when available, else CPU"""
    dtype: Precision = "auto"
    """compute precision: auto = bf16 autocast on CUDA, float32 on CPU (weights stay float32)"""
    save_every: int = 100
    """write checkpoint-<step> every this many steps (and at the last step)"""
    eval_every: int = 100
    """validation loss every this many steps (and at the last step); 0 disables"""
    log_every: int = 1
    """append a metrics.jsonl line every this many steps"""
    threads: int = 0
    """CPU threads for torch (0 = auto: $PMALOPTI_THREADS, else one fewer than the usable cores)"""
    report_to: ReportTo = "none"
    """mirror metrics.jsonl to TensorBoard (RUN/tb) or Weights & Biases"""
    tensorboard: bool = False
    """old spelling of report_to: tensorboard"""
    progress: bool = True
    """show a progress bar on stderr"""

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0, got {self.eval_every}")
        if not 0 <= self.threads <= MAX_THREADS:
            raise ValueError(f"train.threads must be in [0, {MAX_THREADS}], got {self.threads}")
        self.dtype = canonical_precision(self.dtype)  # type: ignore[assignment]
        if self.tensorboard:
            self.report_to, self.tensorboard = "tensorboard", False
