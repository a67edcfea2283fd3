"""PMA-init, seed by seed: loss-spike recovery (a) and continued training / SFT (b).

    OMP_NUM_THREADS=1 python experiments/pma_init/run.py --seeds 0 1 2 3 4 --work runs/pma_init
    OMP_NUM_THREADS=1 python experiments/pma_init/run.py --corrupt --seeds 0 1 2 3 4 --work runs/c
    python experiments/pma_init/summarize.py

Per seed, with the pmalopti commands (in this process, one after the other, one torch thread):
- `pretrain` the tiny model (`pretrain.yaml`) clean, and with a spike injected on purpose
  (`train.inject_spike`, 3 updates at 30x the LR) at update 421 (on the stable plateau) and at
  301 (while the loss still falls), plus a milder 10x spike at 421.
(a) `recover` detects each 30x spike in metrics.jsonl, merges the checkpoints before it and
    continues to step 600 on the same schedule and batches, from
      pma_newest   SMA of the N = 10 checkpoints before the spike (V = 10 steps), AdamW state of
                   the newest of them
      pma_fresh    the same merge, fresh AdamW (the package's default PMA-init)
      last_newest  the newest checkpoint before the spike with its AdamW state (a rollback)
      last_fresh   that checkpoint, fresh AdamW
    against the spiked run continued (no intervention). The merge and the newest checkpoint are
    also evaluated before any training (the run's 64 validation blocks).
(b) From the clean run at the end of its stable phase (step 480): `merge` the 10 checkpoints
    390..480 with SMA, WMA and EMA alpha = 0.2, and start continued training on the K&K corpus
    (`ct.yaml`) and SFT on 1-2 digit additions (`sft.yaml`) from each merge and from
    checkpoint-480 (latest).
`--corrupt` runs only a corrupted-batch spike per seed (3 batches of random tokens at updates
421-423, `train.inject_spike.batch: random_tokens`, left alone, and `recover` without --resume) into
`results/corrupt_seed<S>.json`.
Writes `results/seed<S>.json` (every logged loss of every run, the detected spike, the merges'
weights, wall times). `--prune` deletes each seed's checkpoints once its JSON is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# Where the spike is injected (first disturbed update) and which LR factors; the branch point is
# the newest checkpoint before it. 421: on the stable plateau (the paper's setting); 301: while the
# validation loss is still falling (where the merge of the 10 checkpoints before it is worse than
# the newest one, found on seed 0 of a first pass).
SCENARIOS = {"at421": (421, (30, 10)), "at301": (301, (30,))}
ARMS = (("pma", 10), ("last", 1))  # (init, checkpoints merged): SMA of N = 10 (V = 10) or the last
OPTIMIZERS = ("newest", "fresh")
END_STABLE = 480  # (b) merges end here: schedule.decay_steps = 120 of 600
INITS = ("latest", "sma", "wma", "ema0.2")
MERGE_ARGS = {
    "sma": ["--method", "sma"],
    "wma": ["--method", "wma"],
    "ema0.2": ["--method", "ema", "--alpha", "0.2"],
}


def cli(*args) -> None:
    from pmalopti.cli import main

    t0 = time.perf_counter()
    args = [str(a) for a in args]
    if main(args) != 0:
        raise SystemExit(f"pmalopti {' '.join(args)} failed")
    target = args[args.index("-o") + 1] if "-o" in args else ""
    print(f"  [{time.perf_counter() - t0:6.1f}s] pmalopti {args[0]} -> {target}", flush=True)


def log_of(run: Path) -> dict:
    """Compact per-run record: train loss / grad norm / LR per step, validation loss per eval."""
    from pmalopti.runtime.runlog import read_metrics

    rows = read_metrics(run)
    return {
        "steps": [r["step"] for r in rows],
        "loss": [round(r["loss"], 6) for r in rows],
        "grad_norm": [round(r["grad_norm"], 5) for r in rows],
        "lr": [r["lr"] for r in rows],
        "val_steps": [r["step"] for r in rows if "val_loss" in r],
        "val_loss": [round(r["val_loss"], 6) for r in rows if "val_loss" in r],
        "injected_steps": [r["step"] for r in rows if "injected_lr_factor" in r],
    }


def eval_loss(ckpt: Path, run: Path) -> float:
    """Validation loss of a model folder on the run's 64 validation blocks (as training measures)."""
    from pmalopti.lm.evaluate import evaluate_checkpoints

    (res,) = evaluate_checkpoints(
        [ckpt],
        run / "data" / "val.jsonl",
        batch_size=16,
        max_length=64,
        max_blocks=64,
        device="cpu",
    )
    return round(res["loss"], 6)


def run_seed(seed: int, work: Path) -> dict:
    w = work / f"s{seed}"
    if w.exists():
        shutil.rmtree(w)
    out: dict = {"seed": seed, "wall_s": {}, "recovery": {}}
    runs: list[str] = []
    pre = ["--config", HERE / "pretrain.yaml", "--set", f"seed={seed}"]
    t0 = time.perf_counter()
    cli("pretrain", *pre, "-o", w / "clean", "--set", "train.inject_spike.step=0")
    runs.append("clean")
    for sc, (step, factors) in SCENARIOS.items():
        for f in factors:
            cli(
                "pretrain",
                *pre,
                "-o",
                w / f"{sc}_x{f}",
                "--set",
                f"train.inject_spike.step={step}",
                "--set",
                f"train.inject_spike.lr_factor={f}",
            )
            runs.append(f"{sc}_x{f}")
    out["wall_s"]["pretrain"] = time.perf_counter() - t0

    # (a) recover detects the 30x spike, merges the checkpoints before it, continues to step 600.
    t0 = time.perf_counter()
    for sc in SCENARIOS:
        spiked = w / f"{sc}_x30"
        for init, last in ARMS:
            for opt in OPTIMIZERS:
                name = f"{sc}_{init}_{opt}"
                cli(
                    "recover",
                    "--run-dir",
                    spiked,
                    "--last",
                    last,
                    "-o",
                    w / f"{name}.merged",
                    "--resume",
                    "--resume-dir",
                    w / name,
                    "--optimizer",
                    opt,
                )
                runs.append(name)
        merge = json.loads((w / f"{sc}_pma_newest.merged" / "pmalopti_merge.json").read_text())
        branch = merge["inputs"][-1]["step"]
        out["recovery"][sc] = {
            "spike_step": merge["spike_step"],
            "merged_steps": [i["step"] for i in merge["inputs"]],
            "branch": branch,
            "start_val": {
                "pma": eval_loss(w / f"{sc}_pma_newest.merged", spiked),
                "last": eval_loss(spiked / f"checkpoint-{branch}", spiked),
            },
        }
    out["wall_s"]["recover"] = time.perf_counter() - t0

    # (b) PMA-init for CT and SFT from the clean run at the end of its stable phase.
    t0 = time.perf_counter()
    clean = w / "clean"
    inits = {"latest": clean / f"checkpoint-{END_STABLE}"}
    for m, margs in MERGE_ARGS.items():
        inits[m] = w / f"init_{m}"
        cli(
            "merge",
            "--run-dir",
            clean,
            "--until",
            END_STABLE,
            "--last",
            10,
            *margs,
            "-o",
            inits[m],
            "--no-progress",
        )
    out["init_val"] = {k: eval_loss(p, clean) for k, p in inits.items()}
    out["init_weights"] = {
        m: [
            [i["step"], i["weight"]]
            for i in json.loads((inits[m] / "pmalopti_merge.json").read_text())["inputs"]
        ]
        for m in MERGE_ARGS
    }
    for k, p in inits.items():
        cli(
            "pretrain",
            "--config",
            HERE / "ct.yaml",
            "-o",
            w / f"ct_{k}",
            "--set",
            f"seed={seed}",
            "--set",
            f"init_from={p}",
        )
        cli(
            "sft",
            "--config",
            HERE / "sft.yaml",
            "-o",
            w / f"sft_{k}",
            "--init-from",
            p,
            "--set",
            f"seed={seed}",
        )
        runs += [f"ct_{k}", f"sft_{k}"]
    out["wall_s"]["ct_sft"] = time.perf_counter() - t0
    out["runs"] = {n: log_of(w / n) for n in runs}
    return out


def run_corrupt(seed: int, work: Path) -> dict:
    """The corrupted-batch spike: 3 batches of random tokens at updates 421-423, left alone;
    `recover` (merge only) must find it at its first step and merge checkpoints before it."""
    w = work / f"s{seed}"
    if w.exists():
        shutil.rmtree(w)
    run = w / "at421_random"
    pre = ["--config", HERE / "pretrain.yaml", "--set", f"seed={seed}", "-o", run]
    cli(
        "pretrain",
        *pre,
        "--set",
        "train.inject_spike.step=421",
        "--set",
        "train.inject_spike.lr_factor=1",
        "--set",
        "train.inject_spike.batch=random_tokens",
    )
    cli("recover", "--run-dir", run, "--last", 10, "-o", w / "at421_random.merged")
    merge = json.loads((w / "at421_random.merged" / "pmalopti_merge.json").read_text())
    return {
        "seed": seed,
        "spike_step": merge["spike_step"],
        "merged_steps": [i["step"] for i in merge["inputs"]],
        "runs": {"at421_random": log_of(run)},
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--work", type=Path, default=Path("runs/pma_init"), help="where the runs go")
    p.add_argument(
        "--prune", action="store_true", help="delete a seed's run folders after its JSON"
    )
    p.add_argument(
        "--corrupt",
        action="store_true",
        help="only the corrupted-batch run per seed -> results/corrupt_seed<S>.json",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        t0 = time.perf_counter()
        res = run_corrupt(seed, args.work) if args.corrupt else run_seed(seed, args.work)
        res["wall_s"] = {**res.get("wall_s", {}), "total": time.perf_counter() - t0}
        name = f"corrupt_seed{seed}.json" if args.corrupt else f"seed{seed}.json"
        (RESULTS / name).write_text(json.dumps(res) + "\n")
        print(f"seed {seed} done in {res['wall_s']['total']:.0f}s", flush=True)
        if args.prune:
            shutil.rmtree(args.work / f"s{seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
