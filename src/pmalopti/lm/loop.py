"""The one training loop of `pmalopti pretrain`, `sft`, `recover --resume` and GRPO's warm-up.

AdamW, the WSD schedule (a pure function of the step, so there is no scheduler state to save),
gradient accumulation with a token-mean over the whole optimizer step (two micro-batches give the
same update as one batch of both), gradient clipping, and the shared runtime: checkpoints in the
one format (`pmalopti.runtime.checkpoint`), `metrics.jsonl` (+ TensorBoard / W&B), Ctrl-C that
finishes the step and writes a resumable checkpoint, and a loud stop on a non-finite loss.
`train.inject_spike` disturbs chosen steps on purpose (`pmalopti.lm.inject`).

Callbacks extend it: each is called after every optimizer step with the loop and the step's
record (a plain function `f(step, record)` works too), and may add keys to the record before it
is logged; `on_save(loop, path)` runs after each checkpoint, `on_train_end(loop)` at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pmalopti.lm.configs import OptimConfig, ScheduleConfig, TrainConfig
from pmalopti.lm.inject import random_token_batch
from pmalopti.lm.loss import Batch, batch_loss_sum, evaluate_batches, n_targets
from pmalopti.lm.schedule import wsd_lr, wsd_phase
from pmalopti.runtime.checkpoint import (
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pmalopti.runtime.device import resolve_device
from pmalopti.runtime.fs import remove_stale
from pmalopti.runtime.hf import load_weights
from pmalopti.runtime.runlog import RunLog
from pmalopti.runtime.stop import Interrupted, StopOnSigint, check_finite, check_finite_weights
from pmalopti.runtime.threads import torch_threads

log = logging.getLogger(__name__)


class Callback:
    """A loop extension; override what you need (online PMA, spike detection, tests)."""

    def on_step_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        """After each optimizer step (and its evaluation), before the record is logged."""

    def on_save(self, loop: TrainLoop, path: Path) -> None:
        """After a checkpoint folder is written."""

    def on_train_end(self, loop: TrainLoop) -> None:
        """After the last step (not after an interruption or a divergence)."""


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[int, dict], None]) -> None:
        self.fn = fn

    def on_step_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        self.fn(loop.step, record)


Hook = Callback | Callable[[int, dict], None]


@dataclasses.dataclass
class LoopResult:
    step: int
    tokens: int
    last_checkpoint: Path | None
    metrics: list[dict]


def make_optimizer(model, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW that decays only matrices (not norms or biases), the usual GPT/Llama practice."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
    )


class TrainLoop:
    """State shared with callbacks: model, optimizer, device, step, tokens, run folder."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        run_dir: Path | None,
        train_cfg: TrainConfig,
        optim_cfg: OptimConfig,
        schedule_cfg: ScheduleConfig,
        val_batches: list[Batch] | None,
        hooks: Sequence[Hook],
    ) -> None:
        self.model, self.tokenizer, self.run_dir = model, tokenizer, run_dir
        self.train_cfg, self.optim_cfg, self.schedule_cfg = train_cfg, optim_cfg, schedule_cfg
        self.val_batches = val_batches
        self.callbacks = [h if isinstance(h, Callback) else _FunctionCallback(h) for h in hooks]
        self.device = resolve_device(train_cfg.device, "train.device")
        model.to(self.device)
        model.train()
        self.optimizer = make_optimizer(model, optim_cfg)
        self.step = self.tokens = 0
        self.last_checkpoint: Path | None = None

    def restore(self, ckpt: Path) -> None:
        """Weights, optimizer, RNG, step and tokens of a checkpoint (exact resumption)."""
        state = load_state(ckpt)
        load_weights(self.model, ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        if "rng" in state:
            set_rng_state(state["rng"])
        else:  # lm checkpoints written before the format was shared
            torch.set_rng_state(state["rng_torch"])
        self.last_checkpoint = Path(ckpt)

    def lr(self, step: int) -> float:
        s, total = self.schedule_cfg, self.train_cfg.steps
        return wsd_lr(
            step,
            peak_lr=self.optim_cfg.lr,
            total_steps=total,
            warmup_steps=s.warmup_steps,
            decay_steps=s.decay_steps,
            shape=s.decay_shape,
            min_lr_ratio=s.min_lr_ratio,
        )

    def train_step(self, micro: list[Batch]) -> dict[str, Any]:
        """One optimizer step on the step's micro-batches; returns its record."""
        t0 = time.perf_counter()
        lr = self.lr(self.step)
        inject = self.train_cfg.inject_spike
        injected = inject.active(self.step + 1)  # `step` counts updates done; this is the next
        if injected:
            lr *= inject.lr_factor
            if inject.batch == "random_tokens":
                vocab = self.model.get_input_embeddings().num_embeddings
                micro = [random_token_batch(b, vocab, self.step + 1) for b in micro]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Normalise by the target count of the whole step so accumulation == one big batch.
        denom = max(sum(n_targets(b["labels"]) for b in micro), 1)
        loss_sum, tokens = 0.0, 0
        for b in micro:
            s = batch_loss_sum(self.model, b, self.device, self.train_cfg.dtype)
            (s / denom).backward()
            loss_sum += float(s.detach())
            tokens += int(b["attention_mask"].sum())
        clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        check_finite(
            self.step + 1, {"loss": loss_sum / denom, "grad_norm": grad_norm}, self.last_checkpoint
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += tokens
        s = self.schedule_cfg
        rec = {
            "step": self.step,
            "loss": loss_sum / denom,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": self.tokens,
            "phase": wsd_phase(
                self.step - 1,
                total_steps=self.train_cfg.steps,
                warmup_steps=s.warmup_steps,
                decay_steps=s.decay_steps,
            ),
            "step_time": time.perf_counter() - t0,
        }
        return (rec | inject.record()) if injected else rec

    def save(self, record: dict[str, Any]) -> Path:
        assert self.run_dir is not None
        check_finite_weights(self.model, self.step, self.last_checkpoint)
        state = {"optimizer": self.optimizer.state_dict(), "rng": rng_state()}
        self.last_checkpoint = save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self.tokenizer,
            state,
            tokens=self.tokens,
            log_entry=record,
        )
        for cb in self.callbacks:
            cb.on_save(self, self.last_checkpoint)
        return self.last_checkpoint


def train(
    model,
    tokenizer,
    *,
    batches: Callable[[int], list[Batch]],
    run_dir: Path | None,
    train_cfg: TrainConfig,
    optim_cfg: OptimConfig,
    schedule_cfg: ScheduleConfig,
    val_batches: list[Batch] | None = None,
    resume_from: Path | None = None,
    start_step: int = 0,
    start_tokens: int = 0,
    optimizer_state: dict | None = None,
    hooks: Sequence[Hook] = (),
) -> LoopResult:
    """Train `model` for `train_cfg.steps` optimizer steps in total, writing into `run_dir`.

    `batches(s)` returns the `grad_accum` micro-batches of step `s` (0-based) and must be a pure
    function of `s` for resumption to be exact. `resume_from` restores weights, optimizer, RNG and
    step from a checkpoint; `start_step`/`optimizer_state` start elsewhere (PMA-init recovery).
    `run_dir=None` trains in memory: no checkpoints, no log (GRPO's supervised warm-up).
    """
    with torch_threads(train_cfg.threads):
        loop = TrainLoop(
            model,
            tokenizer,
            run_dir=Path(run_dir) if run_dir is not None else None,
            train_cfg=train_cfg,
            optim_cfg=optim_cfg,
            schedule_cfg=schedule_cfg,
            val_batches=val_batches,
            hooks=hooks,
        )
        loop.step, loop.tokens = start_step, start_tokens
        if resume_from is not None:
            loop.restore(resume_from)
            log.info("resuming %s from step %d (%d tokens)", run_dir, loop.step, loop.tokens)
        elif optimizer_state is not None:
            loop.optimizer.load_state_dict(optimizer_state)
        if loop.step >= train_cfg.steps:
            raise ValueError(
                f"nothing to do: the run is at step {loop.step} and train.steps is {train_cfg.steps}"
            )
        return _run(loop, batches, resumed=resume_from is not None or start_step > 0)


def _run(loop: TrainLoop, batches: Callable[[int], list[Batch]], *, resumed: bool) -> LoopResult:
    from tqdm.auto import tqdm

    cfg = loop.train_cfg
    total = cfg.steps
    in_memory = loop.run_dir is None
    records: list[dict] = []
    with contextlib.ExitStack() as stack:
        runlog = None
        if not in_memory:
            remove_stale(loop.run_dir)  # half-written checkpoints of a killed run
            runlog = stack.enter_context(
                RunLog(loop.run_dir, cfg.report_to, resume_step=loop.step if resumed else None)
            )
        bar = tqdm(total=total, initial=loop.step, disable=not cfg.progress, dynamic_ncols=True)
        stack.callback(bar.close)
        # In memory there is nothing to checkpoint: Ctrl-C keeps its usual meaning.
        stop = None if in_memory else stack.enter_context(StopOnSigint())
        while loop.step < total:
            rec = loop.train_step(batches(loop.step))
            step = loop.step
            due_eval = cfg.eval_every and (step % cfg.eval_every == 0 or step == total)
            if loop.val_batches and due_eval:
                rec["val_loss"] = evaluate_batches(
                    loop.model, loop.val_batches, loop.device, cfg.dtype
                )
            for cb in loop.callbacks:
                cb.on_step_end(loop, rec)
            if runlog is not None and (
                step % cfg.log_every == 0
                or step == total
                or "val_loss" in rec
                or "injected_lr_factor" in rec
            ):
                runlog.write(rec)
            records.append(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}", refresh=False)
            requested = stop is not None and stop.requested
            if not in_memory and (step % cfg.save_every == 0 or step == total or requested):
                loop.save(rec)
            if requested and step < total:
                raise Interrupted(
                    f"stopped at step {step}; checkpoint {loop.last_checkpoint}; "
                    "continue with --resume"
                )
        for cb in loop.callbacks:
            cb.on_train_end(loop)
    return LoopResult(loop.step, loop.tokens, loop.last_checkpoint, records)
