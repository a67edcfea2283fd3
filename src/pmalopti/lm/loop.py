"""The training loop shared by `pmalopti pretrain`, `sft` and `recover --resume`.

AdamW, the WSD schedule (a pure function of the step, so there is no scheduler state to save),
gradient accumulation with a token-mean over the whole optimizer step (two micro-batches give the
same update as one batch of both), gradient clipping, checkpoints as Hugging Face folders, a
metrics.jsonl log, optional TensorBoard, and Ctrl-C that finishes the current step, writes a
resumable checkpoint and stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from pmalopti.config import MAX_THREADS, bounded
from pmalopti.lm.schedule import DecayShape, wsd_lr, wsd_phase
from pmalopti.runtime.fs import atomic_dir, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

IGNORE = -100
TRAINING_STATE = "training_state.pt"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA when available, else CPU"""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """compute dtype: auto = bf16 autocast on CUDA, float32 on CPU (weights stay float32)"""
    save_every: int = bounded(100, ge=1)
    """write checkpoint-<step> every this many steps (and at the last step)"""
    eval_every: int = bounded(100, ge=0)
    """validation loss every this many steps (and at the last step); 0 disables"""
    log_every: int = bounded(1, ge=1)
    """append a metrics.jsonl line every this many steps"""
    threads: int = bounded(0, ge=0, le=MAX_THREADS)
    """CPU threads for torch (0 = leave torch's default)"""
    tensorboard: bool = False
    """also write TensorBoard event files to RUN/tb"""
    progress: bool = True
    """show a progress bar on stderr"""


Batch = dict[str, torch.Tensor]


# --- pure pieces -------------------------------------------------------------------------------


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy and the number of target tokens.

    logits: (B, T, V); labels: (B, T) with IGNORE (-100) on positions that are not targets.
    Position t predicts labels[t + 1].
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, int((shift_labels != IGNORE).sum())


def n_targets(labels: torch.Tensor) -> int:
    """Number of positions that contribute to the loss (labels after the causal shift).  (B, T)"""
    return int((labels[:, 1:] != IGNORE).sum())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda was requested but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and dtype in ("auto", "bfloat16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- checkpoints -------------------------------------------------------------------------------


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every `checkpoint-<step>` folder in a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    found = []
    for p in run_dir.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / "config.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-file progress bars (one per checkpoint would drown our own bar)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_checkpoint(
    path: Path,
    model,
    tokenizer,
    *,
    step: int,
    tokens: int,
    optimizer=None,
    extra: dict | None = None,
) -> Path:
    """A Hugging Face folder plus trainer_state.json and (with `optimizer`) training_state.pt."""
    with atomic_dir(path, force=True) as tmp, quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        state = {
            "global_step": step,
            "num_input_tokens_seen": tokens,
            "log_history": [extra] if extra else [],
        }
        atomic_write_json(tmp / "trainer_state.json", state)
        if optimizer is not None:
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "tokens": tokens,
                    "rng_torch": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "rng_python": random.getstate(),
                },
                tmp / TRAINING_STATE,
            )
    return path


def load_training_state(ckpt: Path) -> dict:
    f = Path(ckpt) / TRAINING_STATE
    if not f.is_file():
        raise FileNotFoundError(f"{ckpt} has no {TRAINING_STATE}; it cannot be resumed exactly")
    return torch.load(f, map_location="cpu", weights_only=True)


def load_weights(model, ckpt: Path) -> None:
    """Copy a checkpoint's weights into `model` (same architecture), strictly."""
    from transformers import AutoModelForCausalLM

    with quiet_transformers():
        src = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    model.load_state_dict(src.state_dict(), strict=True)


# --- metrics log -------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics log {path} does not exist")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON ({exc})") from None
    return rows


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (a crash may have left some)."""
    if path.is_file():
        keep = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


class _StopOnSigint:
    """First Ctrl-C: finish the step, checkpoint, stop. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\npmalopti: stopping after this step and writing a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after writing a resumable checkpoint."""


# --- the loop ----------------------------------------------------------------------------------


@dataclasses.dataclass
class LoopResult:
    step: int
    tokens: int
    last_checkpoint: Path | None
    metrics: list[dict]


def evaluate_batches(
    model, batches: list[Batch], device: torch.device, dtype: str = "auto"
) -> float:
    """Token-mean loss over all target tokens of `batches` (no gradient)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            with autocast(device, dtype):
                logits = model(
                    input_ids=b["input_ids"].to(device),
                    attention_mask=b["attention_mask"].to(device),
                ).logits
            s, n = token_loss_sum(logits, b["labels"].to(device))
            total += float(s)
            count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("validation data has no target tokens")
    return total / count


def train(
    model,
    tokenizer,
    *,
    batches: Callable[[int], list[Batch]],
    run_dir: Path,
    train_cfg: TrainConfig,
    optim_cfg: OptimConfig,
    schedule_cfg: ScheduleConfig,
    val_batches: list[Batch] | None = None,
    resume_from: Path | None = None,
    start_step: int = 0,
    start_tokens: int = 0,
    optimizer_state: dict | None = None,
    hooks: tuple[Callable[[int, dict], None], ...] = (),
) -> LoopResult:
    """Train `model` for `train_cfg.steps` optimizer steps in total, writing into `run_dir`.

    `batches(s)` returns the `grad_accum` micro-batches of step `s` (0-based) and must be a pure
    function of `s` for resumption to be exact. `resume_from` restores weights, optimizer, RNG and
    step from a checkpoint; `start_step`/`optimizer_state` start elsewhere (PMA-init recovery).
    `hooks` are called as `hook(step, record)` after each step (tests use them to interrupt).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    device = resolve_device(train_cfg.device)
    model.to(device)
    model.train()
    # Decay only matrices (not norms/biases), the usual GPT/Llama practice.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": optim_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=optim_cfg.lr,
        betas=(optim_cfg.beta1, optim_cfg.beta2),
        eps=optim_cfg.eps,
    )
    step, tokens = start_step, start_tokens
    if resume_from is not None:
        state = load_training_state(resume_from)
        load_weights(model, resume_from)
        optimizer.load_state_dict(state["optimizer"])
        step, tokens = int(state["step"]), int(state["tokens"])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        random.setstate(state["rng_python"])
        log.info("resuming %s from step %d (%d tokens)", run_dir, step, tokens)
    elif optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    metrics_path = run_dir / "metrics.jsonl"
    if resume_from is not None or start_step > 0:
        _truncate_metrics(metrics_path, step)
    elif metrics_path.exists():
        metrics_path.unlink()
    if step >= train_cfg.steps:
        raise ValueError(
            f"nothing to do: the run is at step {step} and train.steps is {train_cfg.steps}"
        )

    total = train_cfg.steps
    sched = dict(
        total_steps=total,
        warmup_steps=schedule_cfg.warmup_steps,
        decay_steps=schedule_cfg.decay_steps,
    )
    tb = _tensorboard(run_dir) if train_cfg.tensorboard else None
    records: list[dict] = []
    last_ckpt: Path | None = None
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=step,
        file=sys.stderr,
        disable=not train_cfg.progress,
        dynamic_ncols=True,
    )
    with _StopOnSigint() as stop, open(metrics_path, "a", encoding="utf-8") as mlog:
        try:
            while step < total:
                t0 = time.perf_counter()
                lr = wsd_lr(
                    step,
                    peak_lr=optim_cfg.lr,
                    shape=schedule_cfg.decay_shape,
                    min_lr_ratio=schedule_cfg.min_lr_ratio,
                    **sched,
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                micro = batches(step)
                # Normalise by the target count of the whole step so accumulation == one big batch.
                denom = max(sum(n_targets(b["labels"]) for b in micro), 1)
                loss_sum = 0.0
                for b in micro:
                    with autocast(device, train_cfg.dtype):
                        logits = model(
                            input_ids=b["input_ids"].to(device),
                            attention_mask=b["attention_mask"].to(device),
                        ).logits  # (B, T, V)
                    s, _ = token_loss_sum(logits, b["labels"].to(device))
                    (s / denom).backward()
                    loss_sum += float(s.detach())
                    tokens += int(b["attention_mask"].sum())
                clip = optim_cfg.grad_clip if optim_cfg.grad_clip > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                rec = {
                    "step": step,
                    "loss": loss_sum / denom,
                    "grad_norm": grad_norm,
                    "lr": lr,
                    "tokens": tokens,
                    "phase": wsd_phase(step - 1, **sched),
                    "step_time": time.perf_counter() - t0,
                }
                if (
                    val_batches
                    and train_cfg.eval_every
                    and (step % train_cfg.eval_every == 0 or step == total)
                ):
                    rec["val_loss"] = evaluate_batches(model, val_batches, device, train_cfg.dtype)
                if step % train_cfg.log_every == 0 or step == total or "val_loss" in rec:
                    mlog.write(json.dumps(rec) + "\n")
                    mlog.flush()
                    if tb is not None:
                        for k in ("loss", "grad_norm", "lr", "val_loss"):
                            if k in rec:
                                tb.add_scalar(f"train/{k}", rec[k], step)
                records.append(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
                for hook in hooks:
                    hook(step, rec)
                if step % train_cfg.save_every == 0 or step == total or stop.requested:
                    last_ckpt = save_checkpoint(
                        run_dir / f"checkpoint-{step}",
                        model,
                        tokenizer,
                        step=step,
                        tokens=tokens,
                        optimizer=optimizer,
                        extra=rec,
                    )
                if stop.requested and step < total:
                    raise Interrupted(
                        f"stopped at step {step}; checkpoint {last_ckpt}; continue with --resume"
                    )
        finally:
            bar.close()
            if tb is not None:
                tb.close()
    return LoopResult(step=step, tokens=tokens, last_checkpoint=last_ckpt, metrics=records)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("train.tensorboard is set but tensorboard is not installed; skipping it")
        return None
    return SummaryWriter(str(run_dir / "tb"))


def iter_micro(batch: Batch, micro_size: int) -> Iterator[Batch]:
    """Split a batch along dim 0 into micro-batches of at most `micro_size` rows."""
    n = batch["input_ids"].size(0)
    for i in range(0, n, micro_size):
        yield {k: v[i : i + micro_size] for k, v in batch.items()}
