"""Demo stage 1: pre-train a tiny LM under a WSD schedule with online PMA, then merge for PMA-init.

The run is an ordinary `pmalopti pretrain` run folder (checkpoints, metrics.jsonl, config.yaml and
the offline PMA report of live vs merged vs annealed) with the config's `online_pma` section on:
one averager per merge method folds the live weights into running averages while training
(arXiv 2505.12082 Sec. 3: merge the last N checkpoints V steps apart) and each merge is
evaluated the moment it completes. The demo sets that section to the report's windows, so the
offline report (which merges the saved checkpoints) must agree: the demo records the difference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

from pmalopti.demo.config import DemoConfig
from pmalopti.lm.data import grammar_document
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
    s = pcfg.schedule
    first, last = stable_range(pcfg.train.steps, s.warmup_steps, s.decay_steps)
    r = pcfg.report
    interval = pcfg.train.save_every * r.stride
    # Online merges over exactly the report's windows: every checkpoint step from the start of
    # the stable phase, N snapshots `interval` apart; the merge at the last stable step is saved
    # for the comparison with the offline PMA-init merge.
    online_cfg = dataclasses.replace(
        pcfg.online_pma,
        enabled=True,
        methods=list(r.methods),
        n=r.n,
        interval=interval,
        every=interval,
        start_step=first,
        save_steps=[last],
    )
    pcfg = dataclasses.replace(pcfg, online_pma=online_cfg)
    train_texts, val_texts = pt.corpus(pcfg)
    model, tok = pt.build_model_and_tokenizer(pcfg, train_texts)
    pt.write_jsonl(run_dir / "data" / "train.jsonl", train_texts)
    pt.write_jsonl(run_dir / "data" / "val.jsonl", val_texts)
    pt.train_run(pcfg, run_dir, model, tok, train_texts)
    log_file = run_dir / "online_pma.jsonl"
    rows = [json.loads(x) for x in log_file.read_text().splitlines()] if log_file.is_file() else []
    paths = pt.report(run_dir, pcfg)
    offline = json.loads(paths["json"].read_text(encoding="utf-8"))
    for row in rows:
        row["phase"] = "stable" if first <= row["step"] <= last else "decay"
    atomic_write_text(run_dir / "online_pma.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return {
        "run": str(run_dir),
        "corpus": corpus_info,
        "parameters": sum(p.numel() for p in model.parameters()),
        "stable_steps": [first, last],
        "pma": offline,
        "online": rows,
        "online_vs_offline_max_abs_diff": _online_vs_offline(rows, offline),
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
    from pmalopti.lm.online_pma import SAVE_DIR
    from pmalopti.pma import merge_checkpoints
    from pmalopti.pma.reader import CheckpointReader
    from pmalopti.pma.spec import MergeSpec
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
    weights = MergeSpec.parse(cfg.pma_method).merge_weights(p.report.n)
    merged = merge_checkpoints(
        [by_step[s] for s in window],
        weights,
        out / "pma-init",
        progress=False,
        metadata={"method": cfg.pma_method, "demo_stage": "pma-init"},
    )
    diff = None
    online = run_dir / SAVE_DIR / f"{cfg.pma_method.replace(':', '')}-step{last}"
    if online.is_dir():
        with CheckpointReader(online) as a, CheckpointReader(merged) as b:
            diff = max(float((a.read(k) - b.read(k)).abs().max()) for k in b.specs if k in a.specs)
    return {
        "path": str(merged),
        "method": cfg.pma_method,
        "steps": window,
        "weights": weights,
        "latest": str(by_step[last]),
        "annealed": str(by_step[max(by_step)]),
        "online_vs_offline_max_abs_weight_diff": diff,
    }
