"""`pmalopti grpo`: GRPO with Advantage Reweighting (AR) and Lopti on a Hugging Face causal LM.

pmalopti grpo --config configs/grpo_tiny.yaml
pmalopti grpo --config configs/grpo_tiny.yaml --set algo.alpha=0.3 --set algo.eta=0.5
pmalopti grpo --config configs/grpo_kk_qwen2.5-3b.yaml --init-from runs/merged   # PMA-init
pmalopti grpo --config configs/grpo_tiny.yaml -o runs/grpo --resume             # continue

Config sections (every field documented in pmalopti/grpo/config.py and docs/grpo.md):
output_dir (-o), seed, model.*, task.*, rollout.*, algo.* (alpha = AR, eta = Lopti), optim.*, train.*.
Without --config the defaults are a tiny CPU run on the arithmetic task.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

from pmalopti.commands._common import add_output, add_training

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "grpo",
        help="GRPO with Advantage Reweighting and Lopti (arXiv 2505.12929)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output(
        p,
        metavar="RUN",
        old=("--output-dir",),
        help="run folder (default: output_dir of the config)",
    )
    add_training(p, resume_checkpoint=True)
    p.set_defaults(func=run)


def _samples(task, split: str, path: str | None, n: int | None, seed: int) -> list[dict]:
    if path is None:
        return task.samples(split, n=n, seed=seed)
    out: list[dict] = []
    for part in _paths(path):
        if not Path(part).exists():
            raise FileNotFoundError(f"task.{split}_path: {part} does not exist")
        out += task.samples(split, n=None, seed=seed, path=part)
    if n is None or n >= len(out):
        return out
    # A seeded subset across all files (a prefix would take only the first file's puzzles).
    keep = sorted(random.Random(seed).sample(range(len(out)), n))
    return [out[i] for i in keep]


def _paths(spec: str | None) -> list[str]:
    return [x.strip() for x in (spec or "").split(",") if x.strip()]


def run(args) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from pmalopti.commands._run_config import load_run_config
    from pmalopti.config import save_config
    from pmalopti.grpo.config import GRPOConfig
    from pmalopti.grpo.model import load_policy, load_reference
    from pmalopti.grpo.trainer import GRPOTrainer
    from pmalopti.runtime.checkpoint import resume_checkpoint, verify_checkpoint
    from pmalopti.runtime.device import resolve_device
    from pmalopti.runtime.fs import prepare_run_dir, removed_on_error
    from pmalopti.tasks import get_task

    cfg, run_dir = load_run_config(
        GRPOConfig, args, args.output, init_key="model.init_from", output_key="output_dir"
    )
    hf_logging.disable_progress_bar()  # per-checkpoint "Loading/Writing" bars drown the run's own
    ckpt = None
    if args.resume:
        if args.resume == "latest":
            ckpt = resume_checkpoint(run_dir) if run_dir.is_dir() else None
        else:
            ckpt = Path(args.resume)
            verify_checkpoint(ckpt)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no readable checkpoint-<step> folder in {run_dir}")
    inputs = [cfg.model.init_from, cfg.model.path, *_paths(cfg.task.train_path)]
    prepare_run_dir(run_dir, resume=bool(args.resume), force=args.force, inputs=inputs)
    with removed_on_error(run_dir, fresh=not args.resume):  # bad task data or model
        save_config(cfg, run_dir / "config.yaml")
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.model.device, "model.device")
        task = get_task(cfg.task.name, **cfg.task.kwargs)
        train = _samples(task, "train", cfg.task.train_path, cfg.task.train_size, cfg.seed)
        evals = _samples(task, "test", cfg.task.eval_path, cfg.task.eval_size, cfg.seed)
        model, tok, init = load_policy(cfg, task, device, run_dir)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        ref = load_reference(init, cfg, device) if cfg.algo.kl_coef > 0 else None
    trainer = GRPOTrainer(
        cfg,
        model,
        tok,
        task,
        train_samples=train,
        eval_samples=evals,
        ref_model=ref,
        run_dir=run_dir,
    )
    if ckpt is not None:
        trainer.resume(ckpt)
        log.info("resumed from %s at step %d", ckpt, trainer.step)
    log.info(
        "grpo: %s on %s (%d train / %d eval samples), %s, run folder %s",
        cfg.model.path or cfg.model.init_from or "tiny model",
        task.name,
        len(train),
        len(evals),
        device,
        run_dir,
    )
    records = trainer.train()
    if records:
        last = records[-1]
        keys = [k for k in last if k.startswith("eval/") and "/" not in k[5:]]
        summary = ", ".join(f"{k} {last[k]:.3f}" for k in ["reward/mean", *keys] if k in last)
        print(f"step {trainer.step}: {summary}", file=sys.stderr)
    if trainer.interrupted:
        print(
            f"interrupted at step {trainer.step}: checkpoint saved in {run_dir}; "
            "continue with the same command and --resume",
            file=sys.stderr,
        )
        return 130
    return 0
