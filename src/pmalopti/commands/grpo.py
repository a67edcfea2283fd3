"""`pmalopti grpo`: GRPO with Advantage Reweighting (AR) and Lopti on a Hugging Face causal LM.

pmalopti grpo --config configs/grpo_tiny.yaml
pmalopti grpo --config configs/grpo_tiny.yaml --set algo.alpha=0.3 --set algo.eta=0.5
pmalopti grpo --config configs/grpo_kk_qwen2.5-3b.yaml --init-from runs/merged   # PMA-init
pmalopti grpo --config configs/grpo_tiny.yaml --resume                           # continue

Config sections (every field documented in pmalopti/train/grpo_config.py and the README):
output_dir, seed, model.*, task.*, rollout.*, algo.* (alpha = AR, eta = Lopti), optim.*, train.*.
Without --config the defaults are a tiny CPU run on the arithmetic task.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
from pathlib import Path

from pmalopti.config import add_config_args

log = logging.getLogger(__name__)

# Fields that may change when a run is resumed (how long, how often to log); everything else
# must match the saved config, or the resumed run would not continue the same experiment.
_RESUMABLE_CHANGES = {"train", "output_dir"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "grpo",
        help="GRPO with Advantage Reweighting and Lopti (arXiv 2505.12929)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument(
        "--init-from", metavar="DIR", help="start from these weights (e.g. a PMA-merged folder)"
    )
    p.add_argument("--output-dir", metavar="DIR", help="run folder (overrides output_dir)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue from the run folder's newest checkpoint (or the one given)",
    )
    p.add_argument(
        "--force", action="store_true", help="delete an existing run folder and start over"
    )
    p.set_defaults(func=run)


def _samples(task, split: str, path: str | None, n: int | None, seed: int) -> list[dict]:
    if path is None:
        return task.samples(split, n=n, seed=seed)
    out: list[dict] = []
    for part in [x.strip() for x in path.split(",") if x.strip()]:
        if not Path(part).exists():
            raise FileNotFoundError(f"task.{split}_path: {part} does not exist")
        out += task.samples(split, n=None, seed=seed, path=part)
    if n is None or n >= len(out):
        return out
    # A seeded subset across all files (a prefix would take only the first file's puzzles).
    keep = sorted(random.Random(seed).sample(range(len(out)), n))
    return [out[i] for i in keep]


def _check_same_experiment(saved: dict, now: dict) -> None:
    diffs = [
        k
        for k in sorted(set(saved) | set(now))
        if k not in _RESUMABLE_CHANGES and saved.get(k) != now.get(k)
    ]
    if diffs:
        raise ValueError(
            f"--resume: the config differs from the run's saved config.yaml in {diffs}; "
            "resume with the same settings (only train.* may change)"
        )


def run(args) -> int:
    import torch
    import yaml
    from transformers.utils import logging as hf_logging

    from pmalopti.config import load_config, save_config, to_dict
    from pmalopti.grpo.config import GRPOConfig
    from pmalopti.grpo.model import load_policy, load_reference, pick_device
    from pmalopti.grpo.trainer import GRPOTrainer, latest_checkpoint
    from pmalopti.tasks import get_task

    overrides = list(args.overrides)
    if args.init_from:
        overrides.append(f"model.init_from={args.init_from}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(GRPOConfig, args.config, overrides)
    hf_logging.disable_progress_bar()  # per-checkpoint "Loading/Writing" bars drown the run's own
    run_dir = Path(cfg.output_dir)

    ckpt = None
    if args.resume:
        ckpt = latest_checkpoint(run_dir) if args.resume == "latest" else Path(args.resume)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint-<step> folder in {run_dir}")
        saved = run_dir / "config.yaml"
        if saved.is_file():
            _check_same_experiment(yaml.safe_load(saved.read_text()), to_dict(cfg))
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not args.force:
            raise FileExistsError(
                f"run folder {run_dir} already exists; use --resume to continue it "
                "or --force to delete it and start over"
            )
        shutil.rmtree(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # bad task data or model: leave no run folder behind (none existed before)
        save_config(cfg, run_dir / "config.yaml")
        torch.manual_seed(cfg.seed)
        device = pick_device(cfg.model.device)
        task = get_task(cfg.task.name, **cfg.task.kwargs)
        train = _samples(task, "train", cfg.task.train_path, cfg.task.train_size, cfg.seed)
        evals = _samples(task, "test", cfg.task.eval_path, cfg.task.eval_size, cfg.seed)
        model, tok, init = load_policy(cfg, task, device, run_dir)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        ref = load_reference(init, cfg, device) if cfg.algo.kl_coef > 0 else None
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
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
