"""Demo stages 2 and 3: PMA-init SFT beside SFT from the latest checkpoint, then GRPO vs AR + Lopti.

Stage 2 (arXiv 2505.12082 Sec. 4.3, PMA-init): the same `pmalopti sft` run from each starting
point; the starting points are also evaluated before any fine-tuning (step 0).
Stage 3 (arXiv 2505.12929): two `pmalopti grpo` runs from the same SFT model with the same seed,
so their first rollout is identical; one is plain GRPO (α = 0, no Lopti), the other uses AR (α)
and Lopti (η). Both log the π_old bucket diagnostics (the paper's Fig. 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from pmalopti.demo.config import DemoConfig
from pmalopti.lm.sft import SFTConfig
from pmalopti.runtime.fs import atomic_write_json

log = logging.getLogger(__name__)


def evaluate_start(scfg: SFTConfig, init: str | Path) -> dict:
    """Validation loss and greedy accuracy of `init` exactly as `sft` measures them at its end."""
    from pmalopti.lm.loss import evaluate_batches
    from pmalopti.lm.sft import collate, encode_rows, greedy_accuracy, load_pairs
    from pmalopti.runtime.device import resolve_device
    from pmalopti.runtime.hf import load_model, load_tokenizer

    device = resolve_device(scfg.train.device, "train.device")
    model, tok = load_model(init, device), load_tokenizer(init)
    _, val_rows, task = load_pairs(scfg)
    val_ex = encode_rows(val_rows, tok, scfg.data.max_length, "validation")
    bs = scfg.train.batch_size
    batches = [collate(val_ex[i : i + bs], tok.pad_token_id) for i in range(0, len(val_ex), bs)]
    out = {"step": 0, "val_loss": evaluate_batches(model, batches, device, scfg.train.dtype)}
    if task is not None and scfg.data.eval_generate:
        rows = val_rows[: scfg.data.eval_generate]
        out["accuracy"] = greedy_accuracy(model, tok, task, rows, device, scfg.data.max_length)
        out["eval_samples"] = len(rows)
    return out


def run_sft(cfg: DemoConfig, inits: dict[str, str], out: Path) -> dict:
    """One SFT run per starting point into `out/sft-from-<name>`; returns their summaries."""
    from pmalopti.lm.sft import sft
    from pmalopti.runtime.runlog import read_metrics

    runs = {}
    for name in cfg.sft_inits:
        scfg = dataclasses.replace(
            cfg.sft,
            seed=cfg.seed,
            init_from=inits[name],
            data=dataclasses.replace(cfg.sft.data, task_kwargs=dict(cfg.task_kwargs)),
        )
        run_dir = out / f"sft-from-{name}"
        log.info("demo: SFT from %s (%s)", name, inits[name])
        start = evaluate_start(scfg, inits[name])
        result, _ = sft(scfg, run_dir)
        metrics = read_metrics(run_dir)
        runs[name] = {
            "run": str(run_dir),
            "init": inits[name],
            "start": start,
            "final": json.loads((run_dir / "eval.json").read_text(encoding="utf-8")),
            "checkpoint": str(result.last_checkpoint),
            "val_curve": [[r["step"], r["val_loss"]] for r in metrics if "val_loss" in r],
            "loss_curve": [[r["step"], r["loss"]] for r in metrics],
        }
    return runs


def grpo_variants(cfg: DemoConfig) -> dict[str, dict]:
    """name -> algo overrides of the two runs compared."""
    return {
        "grpo": {"alpha": 0.0, "eta": None},
        "grpo+ar+lopti": {"alpha": cfg.ar_alpha, "eta": cfg.lopti_eta},
    }


def run_grpo(cfg: DemoConfig, init: str, out: Path) -> dict:
    """Plain GRPO and GRPO + AR + Lopti from `init`, same seed; returns their summaries."""
    from pmalopti.config import save_config
    from pmalopti.grpo.model import load_policy
    from pmalopti.grpo.trainer import GRPOTrainer
    from pmalopti.runtime.device import resolve_device
    from pmalopti.tasks import get_task

    runs = {}
    for name, algo in grpo_variants(cfg).items():
        run_dir = out / name.replace("+", "-")
        gcfg = dataclasses.replace(
            cfg.grpo,
            seed=cfg.seed,
            output_dir=str(run_dir),
            model=dataclasses.replace(cfg.grpo.model, path=None, init_from=init),
            algo=dataclasses.replace(cfg.grpo.algo, **algo),
            task=dataclasses.replace(cfg.grpo.task, kwargs=dict(cfg.task_kwargs)),
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(gcfg, run_dir / "config.yaml")
        log.info("demo: %s from %s", name, init)
        torch.manual_seed(gcfg.seed)
        device = resolve_device(gcfg.model.device, "grpo.model.device")
        task = get_task(gcfg.task.name, **gcfg.task.kwargs)
        train = task.samples("train", n=gcfg.task.train_size, seed=gcfg.seed)
        evals = task.samples("test", n=gcfg.task.eval_size, seed=gcfg.seed)
        model, tok, _ = load_policy(gcfg, task, device, run_dir)
        trainer = GRPOTrainer(
            gcfg, model, tok, task, train_samples=train, eval_samples=evals, run_dir=run_dir
        )
        before = {"step": 0, **trainer.evaluate()}
        atomic_write_json(run_dir / "eval_before.json", before)
        records = trainer.train()
        runs[name] = {
            "run": str(run_dir),
            "init": init,
            "alpha": gcfg.algo.alpha,
            "eta": gcfg.algo.eta,
            "before": before,
            "after": {k: v for k, v in records[-1].items() if k == "step" or k.startswith("eval/")},
            "buckets": mean_buckets(records),
            "curve": [
                {k: r[k] for k in ("step", "reward/mean", "accuracy", "eval/accuracy") if k in r}
                for r in records
            ],
            "first_step_reward": records[0]["reward/mean"],
            "seconds": sum(r["time/step"] for r in records),
        }
    return runs


def mean_buckets(records: list[dict]) -> dict[str, float]:
    """Average of each `diag/...` share over the steps that logged diagnostics."""
    keys = sorted({k for r in records for k in r if k.startswith("diag/")})
    out = {}
    for k in keys:
        vals = [r[k] for r in records if k in r]
        out[k] = sum(vals) / len(vals)
    out["steps"] = sum(1 for r in records if any(k.startswith("diag/") for k in r))
    return out
