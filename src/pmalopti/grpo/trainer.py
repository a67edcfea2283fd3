"""The built-in GRPO trainer with Advantage Reweighting and Lopti (arXiv 2505.12929).

One step: P prompts × G completions sampled at temperature T (rollout) → rewards from the Task →
old log-probs at T under the sampling policy, and reference log-probs when β > 0 → group
advantages → AR (α) → the update phase (`grpo_update.update_policy`: Lopti's passes, minibatches,
micro-batches) → logging, evaluation and checkpoints. How it differs from the paper's verl runs:
one process on one device (no FSDP, no vLLM); sampling uses our KV-cache loop or
`transformers.generate`, both without top-k/top-p.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pmalopti.config import to_dict
from pmalopti.grpo.config import GRPOConfig
from pmalopti.grpo.rollout import (
    Rollout,
    response_logprobs,
    sample_hf,
    sample_loop,
    tokenize_prompts,
)
from pmalopti.grpo.update import UpdateBatch, bucket_diagnostics, update_policy
from pmalopti.lm.schedule import wsd_lr
from pmalopti.rl import group_advantages, reweight_advantages
from pmalopti.runtime.checkpoint import (
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pmalopti.runtime.device import autocast, clock
from pmalopti.runtime.fs import remove_stale
from pmalopti.runtime.hf import load_weights
from pmalopti.runtime.runlog import RunLog
from pmalopti.runtime.stop import StopOnSigint, check_finite, check_finite_weights
from pmalopti.runtime.threads import torch_threads

log = logging.getLogger(__name__)


class PromptStream:
    """Epochs over the training samples in a seeded random order; its state is two integers."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm = self._order()

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._order()
            out.append(self._perm[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict[str, int]) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._perm = self._order()


def _pad_cat(parts: list[torch.Tensor], value) -> torch.Tensor:
    """Concatenate (b_i, R_i) tensors along rows, right-padding columns to the widest."""
    r = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, r - p.shape[1]), value=value) for p in parts])


class GRPOTrainer:
    """GRPO on a Hugging Face causal LM with rewards from a `pmalopti.tasks.Task`.

    Usable from Python with any task-like object (`prompt`, `reward`, `is_correct`,
    `difficulty`); the command `pmalopti grpo` builds everything from a `GRPOConfig`.
    """

    def __init__(
        self,
        cfg: GRPOConfig,
        model,
        tokenizer,
        task,
        *,
        train_samples: list[dict],
        eval_samples: list[dict] | None = None,
        ref_model=None,
        run_dir: str | Path | None = None,
    ):
        if cfg.algo.kl_coef > 0 and ref_model is None:
            raise ValueError("algo.kl_coef > 0 needs a reference model")
        self.cfg, self.model, self.tok, self.task = cfg, model, tokenizer, task
        self.ref = ref_model if cfg.algo.kl_coef > 0 else None
        self.train_samples, self.eval_samples = train_samples, eval_samples or []
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = next(model.parameters()).device
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        warm = o.warmup_steps
        # The WSD schedule of the LM loop with no decay: linear warmup, then constant.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: wsd_lr(
                s, peak_lr=1.0, total_steps=max(s + 1, warm), warmup_steps=warm, decay_steps=0
            ),
        )
        self.sample_gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.stream = PromptStream(len(train_samples), cfg.seed)
        self.step = 0
        self.interrupted = False
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ rollout
    def _amp(self):
        return autocast(self.device, self.cfg.model.autocast)

    def generate(self, samples: list[dict], *, repeat: int, greedy: bool) -> Rollout:
        """Rows: each sample's prompt `repeat` times in a row (a group), sampled in chunks."""
        c = self.cfg.rollout
        prompts = [
            self.task.prompt(s, chat=self.cfg.task.chat, tokenizer=self.tok) for s in samples
        ]
        ids, mask = tokenize_prompts(self.tok, prompts, c.max_prompt_tokens, self.device)
        ids, mask = ids.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
        sampler = sample_loop if c.engine == "loop" else sample_hf
        self.model.eval()
        parts = []
        with self._amp():
            for lo in range(0, ids.shape[0], c.batch_size):
                parts.append(
                    sampler(
                        self.model,
                        self.tok,
                        ids[lo : lo + c.batch_size],
                        mask[lo : lo + c.batch_size],
                        max_new_tokens=c.max_new_tokens,
                        temperature=c.temperature,
                        greedy=greedy,
                        stop=c.stop,
                        generator=self.sample_gen,
                    )
                )
        pad = self.tok.pad_token_id
        return Rollout(
            ids,
            mask,
            _pad_cat([p.response_ids for p in parts], pad),
            _pad_cat([p.response_mask for p in parts], False),
            [t for p in parts for t in p.texts],
            torch.cat([p.truncated for p in parts]),
        )

    @torch.no_grad()
    def _logprobs(self, model, r: Rollout) -> torch.Tensor:
        """(B, R) log-probs at temperature T, no gradient, in chunks of algo.micro_batch_size
        (the (chunk, R, vocabulary) logits are the memory peak, as in the update)."""
        model.eval()
        bs = self.cfg.algo.micro_batch_size
        out = []
        with self._amp():
            for lo in range(0, r.response_ids.shape[0], bs):
                sl = slice(lo, lo + bs)
                lp, _ = response_logprobs(
                    model,
                    r.prompt_ids[sl],
                    r.prompt_mask[sl],
                    r.response_ids[sl],
                    r.response_mask[sl],
                    temperature=self.cfg.rollout.temperature,
                )
                out.append(lp.float())
        return torch.cat(out)

    # ------------------------------------------------------------------ one step
    def _clock(self) -> float:
        return clock(self.device)

    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        p, g = cfg.rollout.prompts_per_step, cfg.rollout.group_size
        t0 = self._clock()
        samples = [self.train_samples[i] for i in self.stream.take(p)]
        roll = self.generate(samples, repeat=g, greedy=False)
        rows = [s for s in samples for _ in range(g)]
        rewards = torch.tensor(
            [float(self.task.reward(t, s)) for t, s in zip(roll.texts, rows, strict=True)]
        )  # (B,)
        correct = [bool(self.task.is_correct(t, s)) for t, s in zip(roll.texts, rows, strict=True)]
        t1 = self._clock()
        old = self._logprobs(self.model, roll)  # (B, R)
        ref = self._logprobs(self.ref, roll) if self.ref is not None else None
        t2 = self._clock()
        adv_seq = group_advantages(rewards, g, scale=cfg.algo.adv_scale).to(self.device)  # (B,)
        adv = reweight_advantages(adv_seq, old, cfg.algo.alpha)  # (B, R)
        batch = UpdateBatch(
            roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask, old, adv, ref
        )
        metrics: dict[str, Any] = {}
        k = cfg.train.diag_every
        if k and (self.step + 1) % k == 0:
            metrics |= bucket_diagnostics(
                self.model, batch, cfg.algo, temperature=cfg.rollout.temperature, amp=self._amp
            )
        td = self._clock()
        metrics |= update_policy(
            self.model,
            self.optimizer,
            batch,
            cfg.algo,
            temperature=cfg.rollout.temperature,
            max_grad_norm=cfg.optim.max_grad_norm,
            scheduler=self.scheduler,
            generator=self.shuffle_gen,
            amp=self._amp,
            with_entropy=cfg.train.entropy,
            loss_scale_factor=float(cfg.rollout.max_new_tokens),
        )
        t3 = self._clock()
        self.step += 1
        lengths = roll.lengths.float()
        n_tok = float(lengths.sum())
        metrics = {
            "step": self.step,
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()),
            "accuracy": sum(correct) / len(correct),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/truncated": float(roll.truncated.float().mean()),
            "lr": self.scheduler.get_last_lr()[0],
            **metrics,
            "time/rollout": t1 - t0,
            "time/old_logprob": t2 - t1,
            "time/diagnostics": td - t2,
            "time/update": t3 - td,
            "time/step": t3 - t0,
            "throughput/generated_tokens": n_tok,
            "throughput/tokens_per_s": n_tok / max(t1 - t0, 1e-9),
        }
        every = cfg.train.sample_every
        if every and self.step % every == 0:
            for i in (0, len(rows) - 1):
                prompt = self.task.prompt(rows[i], chat=cfg.task.chat, tokenizer=self.tok)
                tqdm.write(
                    f"[step {self.step}] reward {float(rewards[i]):+.2f} | "
                    f"…{prompt[-60:]!r} → {roll.texts[i][:400]!r}"
                )
        return metrics

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out set: accuracy overall and per difficulty, reward, length."""
        if not self.eval_samples:
            return {}
        with torch.random.fork_rng(devices=[]):  # greedy draws nothing, but keep RNGs untouched
            roll = self.generate(self.eval_samples, repeat=1, greedy=True)
        per: dict[Any, list[bool]] = defaultdict(list)
        rewards = []
        for text, s in zip(roll.texts, self.eval_samples, strict=True):
            per[self.task.difficulty(s)].append(bool(self.task.is_correct(text, s)))
            rewards.append(float(self.task.reward(text, s)))
        allc = [c for v in per.values() for c in v]
        out = {
            "eval/accuracy": sum(allc) / len(allc),
            "eval/reward_mean": sum(rewards) / len(rewards),
            "eval/response_length": float(roll.lengths.float().mean()),
        }
        for d in sorted(per, key=str):
            out[f"eval/accuracy/{d}"] = sum(per[d]) / len(per[d])
        return out

    # ------------------------------------------------------------------ state
    def _generators(self) -> dict[str, torch.Generator]:
        return {"sample": self.sample_gen, "shuffle": self.shuffle_gen}

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self._generators()),
            "data": self.stream.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        set_rng_state(s["rng"], self._generators())
        self.stream.load_state_dict(s["data"])
        self.step = int(s["step"])

    def save(self) -> Path:
        if self.run_dir is None:
            raise ValueError("the trainer has no run_dir to save checkpoints in")
        check_finite_weights(self.model, self.step, self.last_checkpoint)
        self.last_checkpoint = save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self.tok,
            self.state_dict(),
            keep=self.cfg.train.keep_checkpoints,
            info={"config": to_dict(self.cfg)},
        )
        return self.last_checkpoint

    def resume(self, ckpt: Path) -> None:
        """Load a checkpoint's weights and trainer state (`train` then drops log lines after it)."""
        ckpt = Path(ckpt)
        load_weights(self.model, ckpt)
        self.load_state_dict(load_state(ckpt))
        self.last_checkpoint = ckpt

    # ------------------------------------------------------------------ loop
    def train(self) -> list[dict[str, Any]]:
        """Run until `train.steps`; returns the step records. Sets `interrupted` on Ctrl-C.

        A non-finite loss or gradient norm raises `TrainingDiverged` naming the step; nothing
        after the last good checkpoint is saved.
        """
        t = self.cfg.train
        self.interrupted = False
        records = []
        runlog = None
        if self.run_dir is not None:
            remove_stale(self.run_dir)  # half-written checkpoints of a killed run
            runlog = RunLog(
                self.run_dir,
                t.report_to,
                resume_step=self.step if self.step else None,  # a continued run keeps its lines
                config=to_dict(self.cfg),
            )
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            desc="grpo",
            disable=not t.progress,
            dynamic_ncols=True,
        )
        try:
            with torch_threads(t.threads), StopOnSigint() as stop:
                if t.eval_at_start and self.step == 0 and self.eval_samples:
                    rec = {"step": 0, **self.evaluate()}
                    if runlog is not None:
                        runlog.write(rec)
                    records.append(rec)
                while self.step < t.steps and not stop.requested:
                    rec = self.train_step()
                    check_finite(
                        self.step,
                        {k: rec[k] for k in ("actor/loss", "actor/grad_norm") if k in rec},
                        self.last_checkpoint,
                    )
                    last = self.step == t.steps
                    if (t.eval_every and self.step % t.eval_every == 0) or last:
                        rec |= self.evaluate()
                    if runlog is not None:
                        runlog.write(rec)
                    records.append(rec)
                    bar.update(1)
                    postfix = {"reward": f"{rec['reward/mean']:.3f}"}
                    if "eval/accuracy" in rec:
                        postfix["eval_acc"] = f"{rec['eval/accuracy']:.3f}"
                    bar.set_postfix(**postfix)
                    due = (t.save_every and self.step % t.save_every == 0) or last
                    if (due or stop.requested) and self.run_dir is not None:
                        self.save()
                self.interrupted = stop.requested and self.step < t.steps
        finally:
            bar.close()
            if runlog is not None:
                runlog.close()
        return records
