"""`pmalopti sft`: supervised fine-tuning on prompt -> target pairs, loss on target tokens only.

Starts from a checkpoint (`init_from`, e.g. a PMA merge: "PMA-init", arXiv 2505.12082 Sec. 4.3)
with a fresh optimizer, on the same loop as pre-training. Data: a task's samples (its `prompt` and
reference `target`) or a .jsonl/.parquet file with prompt and target columns.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from pmalopti.config import SEED, bounded, save_config
from pmalopti.lm.configs import OptimConfig, ScheduleConfig, TrainConfig
from pmalopti.lm.data import batch_indices
from pmalopti.lm.loop import LoopResult, train
from pmalopti.lm.loss import IGNORE, evaluate_batches
from pmalopti.runtime.device import resolve_device
from pmalopti.runtime.fs import (
    atomic_write_json,
    iter_jsonl,
    prepare_run_dir,
    removed_on_error,
)
from pmalopti.runtime.threads import torch_threads

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SFTDataConfig:
    task: str = "arithmetic"
    """task whose samples, prompts and reference targets make the data (arithmetic, kk, math)"""
    task_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """keyword arguments of get_task (e.g. {max_digits: 2}), as grpo's task.kwargs"""
    path: str = ""
    """a .jsonl / .parquet file with prompt and target columns (overrides task samples)"""
    prompt_field: str = "prompt"
    """column holding the prompt (with path)"""
    target_field: str = "target"
    """column holding the target response (with path)"""
    num_train: int = bounded(4000, ge=1)
    """training samples drawn from the task"""
    num_val: int = bounded(200, ge=1)
    """validation samples (task split "test" when it has one; else held out from the file)"""
    max_length: int = bounded(128, ge=4)
    """longest prompt + target in tokens; longer examples are dropped (and counted)"""
    eval_generate: int = bounded(64, ge=0)
    """validation samples answered greedily at the end to measure task accuracy (0 = skip)"""


@dataclasses.dataclass
class SFTConfig:
    seed: int = bounded(0, **SEED)
    """seed for sampling and batch order"""
    init_from: str = ""
    """checkpoint to fine-tune (required; --init-from on the command line)"""
    data: SFTDataConfig = dataclasses.field(default_factory=SFTDataConfig)
    """prompt -> target data"""
    optim: OptimConfig = dataclasses.field(
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0)
    )
    """AdamW (fresh state)"""
    schedule: ScheduleConfig = dataclasses.field(
        default_factory=lambda: ScheduleConfig(warmup_steps=20, decay_steps=0)
    )
    """LR schedule"""
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(steps=300, save_every=100, eval_every=50)
    )
    """loop, checkpointing and logging"""


# --- pure data pieces --------------------------------------------------------------------------


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt then target + EOS; labels are IGNORE on the prompt.

    Prompt and target are tokenized separately so the boundary is exact (a BPE merge across the
    boundary would otherwise blur which tokens are "answer").
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t = [*tokenizer(target, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return p + t, [IGNORE] * len(p) + t


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example.  -> input_ids, attention_mask, labels: (B, T)"""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --- data --------------------------------------------------------------------------------------


def load_pairs(cfg: SFTConfig) -> tuple[list[dict], list[dict], object | None]:
    """(train, val) rows with "prompt" and "target" (and "sample" for task data), and the task."""
    d = cfg.data
    if d.path:
        rows = _read_pairs(Path(d.path), d.prompt_field, d.target_field)
        if len(rows) < 2:
            raise ValueError(f"{d.path}: need at least 2 rows (train and validation)")
        g = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(rows), generator=g).tolist()
        n_val = min(d.num_val, len(rows) // 2)
        return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]], None
    from pmalopti.tasks import get_task

    task = get_task(d.task, **d.task_kwargs)

    def rows(split: str, n: int) -> list[dict]:
        return [
            {"prompt": task.prompt(s), "target": task.target(s), "sample": s}
            for s in task.samples(split, n=n, seed=cfg.seed)
        ]

    return rows("train", d.num_train), rows("test", d.num_val), task


def _read_pairs(path: Path, pf: str, tf: str) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        if path.suffix == ".jsonl":
            raw = [row for _, row in iter_jsonl(path, f"data file {path}")]
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            raw = pq.read_table(path).to_pylist()
        else:
            raise ValueError(f"{path}: SFT data must be .jsonl or .parquet, got {path.suffix!r}")
    except OSError as exc:
        raise ValueError(f"cannot read data file {path}: {exc}") from None
    out = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or pf not in r or tf not in r:
            raise ValueError(
                f"{path} row {i}: needs {pf!r} and {tf!r} fields (data.prompt_field / data.target_field)"
            )
        out.append({"prompt": str(r[pf]), "target": str(r[tf])})
    return out


def encode_rows(
    rows: list[dict], tokenizer, max_length: int, what: str
) -> list[tuple[list[int], list[int]]]:
    enc = [encode_pair(tokenizer, r["prompt"], r["target"]) for r in rows]
    kept = [e for e in enc if len(e[0]) <= max_length]
    if len(kept) < len(enc):
        log.warning(
            "sft: dropped %d of %d %s examples longer than data.max_length=%d",
            len(enc) - len(kept),
            len(enc),
            what,
            max_length,
        )
    if not kept:
        raise ValueError(f"no {what} example fits data.max_length={max_length}")
    return kept


# --- the command's work ------------------------------------------------------------------------


def sft(
    cfg: SFTConfig, run_dir: str | Path, *, resume: bool = False, force: bool = False, hooks=()
) -> tuple[LoopResult, dict]:
    """Fine-tune `cfg.init_from` into `run_dir`; returns the loop result and final eval metrics."""
    from pmalopti.runtime.checkpoint import resume_checkpoint
    from pmalopti.runtime.hf import load_model, load_tokenizer

    run_dir = Path(run_dir)
    if not resume and not cfg.init_from:
        raise ValueError(
            "sft needs a model to fine-tune: --init-from CKPT (or init_from in the config)"
        )
    prepare_run_dir(run_dir, resume=resume, force=force, inputs=[cfg.init_from, cfg.data.path])
    resume_from = None
    if resume:
        resume_from = source = resume_checkpoint(run_dir, required=True)
    else:
        source = Path(cfg.init_from)
    with removed_on_error(run_dir, fresh=not resume):
        model, tok = load_model(source), load_tokenizer(source)
        train_rows, val_rows, task = load_pairs(cfg)
        train_ex = encode_rows(train_rows, tok, cfg.data.max_length, "training")
        val_ex = encode_rows(val_rows, tok, cfg.data.max_length, "validation")
        save_config(cfg, run_dir / "config.yaml")
    with torch_threads(cfg.train.threads):
        result, val_batches = fit(
            model, tok, train_ex, val_ex, cfg, run_dir, resume_from=resume_from, hooks=hooks
        )
        t = cfg.train
        device = resolve_device(t.device, "train.device")
        final = {
            "step": result.step,
            "val_loss": evaluate_batches(model, val_batches, device, t.dtype),
        }
        if task is not None and cfg.data.eval_generate:
            rows = val_rows[: cfg.data.eval_generate]
            final["accuracy"] = greedy_accuracy(model, tok, task, rows, device, cfg.data.max_length)
            final["eval_samples"] = len(rows)
    atomic_write_json(run_dir / "eval.json", final)
    return result, final


def fit(
    model,
    tok,
    train_ex: list[tuple[list[int], list[int]]],
    val_ex: list[tuple[list[int], list[int]]],
    cfg: SFTConfig,
    run_dir: Path | None,
    *,
    resume_from: Path | None = None,
    hooks=(),
) -> tuple[LoopResult, list[dict]]:
    """The SFT loop on encoded (input_ids, labels) pairs; `run_dir=None` trains in memory."""
    t = cfg.train

    def batches(step: int) -> list[dict]:
        idx = batch_indices(step, t.batch_size * t.grad_accum, len(train_ex), cfg.seed)
        return [
            collate([train_ex[j] for j in idx[i : i + t.batch_size]], tok.pad_token_id)
            for i in range(0, len(idx), t.batch_size)
        ]

    val_batches = [
        collate(val_ex[i : i + t.batch_size], tok.pad_token_id)
        for i in range(0, len(val_ex), t.batch_size)
    ]
    result = train(
        model,
        tok,
        batches=batches,
        run_dir=run_dir,
        train_cfg=t,
        optim_cfg=cfg.optim,
        schedule_cfg=cfg.schedule,
        val_batches=val_batches,
        resume_from=resume_from,
        hooks=hooks,
    )
    return result, val_batches


def greedy_accuracy(
    model, tokenizer, task, rows: list[dict], device, max_length: int, batch_size: int = 32
) -> float:
    """Share of `rows` whose greedy completion `task.is_correct` accepts."""
    model.eval()
    correct = 0
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues at the right edge
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            enc = tokenizer(
                [r["prompt"] for r in chunk],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max(1, max_length - enc["input_ids"].size(1)),
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            texts = tokenizer.batch_decode(
                out[:, enc["input_ids"].size(1) :], skip_special_tokens=True
            )
            correct += sum(
                task.is_correct(txt, r["sample"]) for txt, r in zip(texts, chunk, strict=True)
            )
    finally:
        tokenizer.padding_side = old_side
    return correct / max(len(rows), 1)
