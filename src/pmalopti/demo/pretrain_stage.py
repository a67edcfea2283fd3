"""Demo stage 1: pre-train a tiny LM under a WSD schedule with online PMA, then merge for PMA-init.

The run is an ordinary `pmalopti pretrain` run folder (checkpoints, metrics.jsonl, config.yaml and
the offline PMA report of live vs merged vs annealed). On top, one `OnlineAverager` per merge
method folds the live weights into running averages while training (arXiv 2505.12082 Sec. 3:
merge the last N checkpoints V steps apart), and each merge is evaluated on the validation blocks
the moment it completes. The offline report merges the saved checkpoints of the same windows, so
the two must agree: the demo records the difference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import torch

from pmalopti.demo.config import DemoConfig
from pmalopti.lm.data import grammar_document, lm_batch
from pmalopti.runtime.fs import atomic_write_text

log = logging.getLogger(__name__)


def write_corpus(cfg: DemoConfig, path: Path) -> dict:
    """Arithmetic problems with their answers mixed with grammar text, one JSON line each.

    Arithmetic documents come from the task's "train" split only, so the SFT and GRPO evaluation
    problems (its "test" split) are never seen in pre-training.
    """
    from pmalopti.tasks import get_task

    task = get_task(cfg.sft.data.task, **cfg.task_kwargs)
    n_arith = round(cfg.corpus.docs * cfg.corpus.arithmetic_share)
    texts = [
        task.prompt(s) + task.target(s) for s in task.samples("train", n=n_arith, seed=cfg.seed)
    ]
    rng = random.Random(f"demo-grammar/{cfg.seed}")
    texts += [grammar_document(rng) for _ in range(cfg.corpus.docs - n_arith)]
    random.Random(cfg.seed).shuffle(texts)
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return {"path": str(path), "docs": len(texts), "arithmetic_docs": n_arith}


def _parse_method(method: str) -> tuple[str, float | None]:
    name, _, alpha = method.partition(":")
    return name, float(alpha) if alpha else None


class OnlinePMA:
    """A training-loop hook: online SMA/WMA/EMA merges, each evaluated when it completes.

    Merge points fall on every checkpoint step (`every = interval = save_every * stride`), and no
    window reaches back into the warmup (`start_step = warmup_steps`), matching the offline
    report's windows. `keep` names the (method, step) merge to keep in memory for comparison
    with the offline merge written for PMA-init.
    """

    def __init__(
        self,
        model,
        methods: list[str],
        *,
        n: int,
        interval: int,
        start_step: int,
        val_batches: list[dict],
        keep: tuple[str, int] | None = None,
    ) -> None:
        from pmalopti.pma import OnlineAverager

        self.model, self.val_batches, self.keep = model, val_batches, keep
        self.averagers = {}
        for m in methods:
            name, alpha = _parse_method(m)
            self.averagers[m] = OnlineAverager(
                model,
                method=name,  # type: ignore[arg-type]
                alpha=alpha,
                n=n,
                interval=interval,
                every=interval,
                start_step=start_step,
            )
        self.rows: list[dict] = []
        self.kept: dict[str, torch.Tensor] | None = None
        for avg in self.averagers.values():
            avg.step(0)  # the starting weights, in case a window begins at step 0

    def __call__(self, step: int, record: dict) -> None:
        from pmalopti.lm.loss import evaluate_batches

        device = next(self.model.parameters()).device
        for m, avg in self.averagers.items():
            if not avg.step(step):
                continue
            with avg.swap_in():
                loss = evaluate_batches(self.model, self.val_batches, device)
            self.rows.append({"step": step, "method": m, "val_loss": loss})
            if self.keep == (m, step):
                self.kept = avg.merged_state_dict()


def run_pretrain(cfg: DemoConfig, out: Path) -> dict:
    """Stage 1 into `out/pretrain`; returns the stage's summary (all numbers read from its files)."""
    from pmalopti.lm import pretrain as pt
    from pmalopti.lm.schedule import stable_range

    corpus_info = write_corpus(cfg, out / "data" / "corpus.jsonl")
    pcfg = dataclasses.replace(
        cfg.pretrain,
        seed=cfg.seed,
        init_from="",
        data=dataclasses.replace(cfg.pretrain.data, path=str(out / "data" / "corpus.jsonl")),
    )
    run_dir = out / "pretrain"
    train_texts, val_texts = pt.corpus(pcfg)
    model, tok = pt.build_model_and_tokenizer(pcfg, train_texts)
    pt.write_jsonl(run_dir / "data" / "train.jsonl", train_texts)
    pt.write_jsonl(run_dir / "data" / "val.jsonl", val_texts)
    # The same validation batches the training loop evaluates, so online losses compare 1:1.
    val = pt.val_blocks_of(run_dir, tok, pcfg.data.block_size, pcfg.data.max_val_blocks)
    bs = pcfg.train.batch_size
    val_batches = [lm_batch(val[i : i + bs]) for i in range(0, val.size(0), bs)]
    s = pcfg.schedule
    first, last = stable_range(pcfg.train.steps, s.warmup_steps, s.decay_steps)
    r = pcfg.report
    online = OnlinePMA(
        model,
        list(r.methods),
        n=r.n,
        interval=pcfg.train.save_every * r.stride,
        start_step=first,
        val_batches=val_batches,
        keep=(cfg.pma_method, last),
    )
    pt.train_run(pcfg, run_dir, model, tok, train_texts, hooks=(online,))
    paths = pt.report(run_dir, pcfg)
    offline = json.loads(paths["json"].read_text(encoding="utf-8"))
    for row in online.rows:
        row["phase"] = "stable" if first <= row["step"] <= last else "decay"
    atomic_write_text(
        run_dir / "online_pma.jsonl", "".join(json.dumps(row) + "\n" for row in online.rows)
    )
    return {
        "run": str(run_dir),
        "corpus": corpus_info,
        "parameters": sum(p.numel() for p in model.parameters()),
        "stable_steps": [first, last],
        "pma": offline,
        "online": online.rows,
        "online_vs_offline_max_abs_diff": _online_vs_offline(online.rows, offline),
        "kept_merge": online.kept,  # popped by the caller (tensors are not JSON)
    }


def _online_vs_offline(rows: list[dict], offline: dict) -> float | None:
    """Largest |online - offline| validation loss over the (step, method) pairs both evaluated."""
    diffs = [
        abs(row["val_loss"] - p[row["method"]])
        for p in offline["points"]
        for row in rows
        if row["step"] == p["step"] and row["method"] in p
    ]
    return max(diffs) if diffs else None


def write_pma_init(cfg: DemoConfig, stage: dict, out: Path) -> dict:
    """Merge the N checkpoints ending at the last stable step into `out/pma-init` (a HF folder)
    with the streaming offline merge, and compare it with the online averager's merge there."""
    from pmalopti.lm.evaluate import method_weights
    from pmalopti.pma import merge_checkpoints
    from pmalopti.runtime.checkpoint import list_checkpoints

    p = cfg.pretrain
    run_dir = Path(stage["run"])
    last = stage["stable_steps"][1]
    by_step = dict(list_checkpoints(run_dir))
    interval = p.train.save_every * p.report.stride
    window = [last - (p.report.n - 1 - i) * interval for i in range(p.report.n)]
    missing = [s for s in window if s not in by_step]
    if missing:
        raise FileNotFoundError(f"{run_dir}: no checkpoint for steps {missing} of the PMA window")
    weights = method_weights(cfg.pma_method, p.report.n)
    merged = merge_checkpoints(
        [by_step[s] for s in window],
        weights,
        out / "pma-init",
        progress=False,
        metadata={"method": cfg.pma_method, "demo_stage": "pma-init"},
    )
    diff = None
    kept = stage.pop("kept_merge", None)
    if kept is not None:
        from safetensors.torch import load_file

        written: dict[str, torch.Tensor] = {}
        for f in sorted(merged.glob("*.safetensors")):
            written.update(load_file(str(f)))
        diff = max(float((kept[k] - written[k]).abs().max()) for k in written if k in kept)
    return {
        "path": str(merged),
        "method": cfg.pma_method,
        "steps": window,
        "weights": weights,
        "latest": str(by_step[last]),
        "annealed": str(by_step[max(by_step)]),
        "online_vs_offline_max_abs_weight_diff": diff,
    }
