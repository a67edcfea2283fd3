"""Summarise experiments/pma_init/results/*.json into summary.json (statistics and verdicts here;
results.md and the README section from render.py, the figures from figures.py).

    python experiments/pma_init/summarize.py

Every number in README.md's results section and in results.md is computed here from the seed files.
The verdict rule, fixed before the runs: for a comparison A vs B on a metric, take the per-seed
paired difference d = A - B (negative = A has the lower loss). The difference is *outside the seed
spread* when the 95% t-interval of the mean difference, mean(d) +- t(0.975, n-1) sd(d) / sqrt(n),
excludes 0; otherwise it is *within noise*.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# t(0.975, df) for df = 1..30 (two-sided 95%)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip
END_STABLE, END = 480, 600
ARMS = {
    "x30": "no intervention (spiked run continued)",
    "x10": "no intervention, milder spike (10x LR)",
    "pma_newest": "PMA-init: SMA of 10, AdamW state kept",
    "pma_fresh": "PMA-init: SMA of 10, fresh AdamW",
    "last_newest": "last checkpoint, AdamW state kept (rollback)",
    "last_fresh": "last checkpoint, fresh AdamW",
    "clean": "reference: the same run without a spike",
}
COLORS = {
    "x30": "tab:red",
    "x10": "tab:orange",
    "pma_newest": "tab:blue",
    "pma_fresh": "tab:cyan",
    "last_newest": "tab:green",
    "last_fresh": "tab:olive",
}
COMPARISONS = (  # (A, B): A - B
    ("pma_newest", "last_newest"),
    ("pma_fresh", "last_fresh"),
    ("pma_fresh", "x30"),
    ("pma_newest", "x30"),
    ("last_newest", "x30"),
    ("x10", "clean"),
    ("x30", "clean"),
    ("pma_fresh", "pma_newest"),
    ("last_fresh", "last_newest"),
)
INITS = {
    "latest": "latest (checkpoint-480)",
    "sma": "SMA of 10",
    "wma": "WMA of 10",
    "ema0.2": "EMA α=0.2 of 10",
}
TASKS = {"ct": ("continued training (K&K corpus)", 200), "sft": ("SFT (1–2 digit additions)", 300)}
EARLY = 50  # "early" = the evaluations at steps 10..50 of CT / SFT


def mean_std(xs: list[float]) -> dict:
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "seeds": xs,
    }


def paired(a: list[float], b: list[float]) -> dict:
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    m = statistics.fmean(d)
    sd = statistics.stdev(d) if n > 1 else math.inf
    half = T975[min(n - 1, len(T975)) - 1] * sd / math.sqrt(n) if n > 1 else math.inf
    lo, hi = m - half, m + half
    verdict = "A lower" if hi < 0 else "B lower" if lo > 0 else "within noise"
    return {
        "mean": m,
        "std": sd,
        "ci95": [lo, hi],
        "n": n,
        "a_lower_on": sum(x < 0 for x in d),
        "verdict": verdict,
        "per_seed": d,
    }


def val_at(run: dict) -> dict[int, float]:
    return dict(zip(run["val_steps"], run["val_loss"], strict=True))


def recovery_metrics(run: dict, branch: int) -> dict[str, float]:
    v = val_at(run)
    stable = [x for s, x in v.items() if branch < s <= END_STABLE]
    losses = [x for s, x in zip(run["steps"], run["loss"], strict=True) if s > branch]
    return {
        "val_first": v[branch + 10],
        "val_mean_stable": statistics.fmean(stable),
        "val_480": v[END_STABLE],
        "val_600": v[END],
        "max_train_loss": max(losses),
    }


def task_metrics(run: dict, steps: int) -> dict[str, float]:
    v = val_at(run)
    gn = [g for s, g in zip(run["steps"], run["grad_norm"], strict=True) if s <= EARLY]
    return {
        "val_10": v[10],
        "val_early": statistics.fmean(x for s, x in v.items() if s <= EARLY),
        "val_final": v[steps],
        "grad_norm_early_max": max(gn),
        "grad_norm_early_std": statistics.stdev(gn),
    }


def corrupt_summary(seeds: list[dict]) -> dict | None:
    """The random-token spike (results/corrupt_seed<S>.json) against the same seed's clean run."""
    files = {int(p.stem[12:]): p for p in RESULTS.glob("corrupt_seed*.json")}
    if not files or set(files) != {s["seed"] for s in seeds}:
        return None  # absent or incomplete: reported only when every seed has it
    rows = [json.loads(files[s["seed"]].read_text()) for s in seeds]
    branch = 420
    per = {
        "random": [recovery_metrics(r["runs"]["at421_random"], branch) for r in rows],
        "clean": [recovery_metrics(s["runs"]["clean"], branch) for s in seeds],
    }
    metrics = ("val_first", "val_mean_stable", "val_600")
    return {
        "injected_updates": [421, 423],
        "detected_spike_steps": [r["spike_step"] for r in rows],
        "merged_steps": [r["merged_steps"] for r in rows],
        "arms": {a: {m: mean_std([x[m] for x in v]) for m in v[0]} for a, v in per.items()},
        "comparisons": [
            {"a": "random", "b": "clean", "metric": m,
             **paired([x[m] for x in per["random"]], [x[m] for x in per["clean"]])}
            for m in metrics
        ],
    }  # fmt: skip


def load_seeds() -> list[dict]:
    files = sorted(RESULTS.glob("seed*.json"), key=lambda p: int(p.stem[4:]))
    if not files:
        raise SystemExit(f"no {RESULTS}/seed*.json: run experiments/pma_init/run.py first")
    return [json.loads(p.read_text()) for p in files]


def summarize(seeds: list[dict]) -> dict:
    out: dict = {"seeds": [s["seed"] for s in seeds], "recovery": {}, "pma_init": {}}
    for sc, info in seeds[0]["recovery"].items():
        branch = info["branch"]
        for s in seeds:  # the procedure, not a tuned constant: check what recover did per seed
            r = s["recovery"][sc]
            assert r["branch"] == branch, (s["seed"], sc, r["branch"])
            assert r["spike_step"] == int(sc[2:]) + 1, (s["seed"], sc, r["spike_step"])
        arms = [a for a in ARMS if a in ("clean",) or f"{sc}_{a}" in seeds[0]["runs"]]
        per: dict[str, dict[str, list[float]]] = {}
        for a in arms:
            key = a if a == "clean" else f"{sc}_{a}"
            rows = [recovery_metrics(s["runs"][key], branch) for s in seeds]
            per[a] = {m: [r[m] for r in rows] for m in rows[0]}
        start = {k: [s["recovery"][sc]["start_val"][k] for s in seeds] for k in ("pma", "last")}
        rollback_exact = max(
            abs(x - y)
            for s in seeds
            for st, x in val_at(s["runs"][f"{sc}_last_newest"]).items()
            for y in [val_at(s["runs"]["clean"])[st]]
        )
        out["recovery"][sc] = {
            "spike_updates": [int(sc[2:]), int(sc[2:]) + 2],
            "detected_spike_step": info["spike_step"],
            "branch": branch,
            "merged_steps": info["merged_steps"],
            "start_val": {k: mean_std(v) for k, v in start.items()},
            "start_val_pma_minus_last": paired(start["pma"], start["last"]),
            "rollback_vs_clean_max_abs_diff": rollback_exact,
            "arms": {a: {m: mean_std(v) for m, v in per[a].items()} for a in arms},
            "comparisons": [
                {"a": a, "b": b, "metric": m, **paired(per[a][m], per[b][m])}
                for a, b in COMPARISONS
                if a in per and b in per
                for m in ("val_first", "val_mean_stable", "val_600")
            ],
        }
    corrupt = corrupt_summary(seeds)
    if corrupt:
        out["corrupt_batch"] = corrupt
    init_val = {k: [s["init_val"][k] for s in seeds] for k in INITS}
    out["pma_init"]["init_val"] = {k: mean_std(v) for k, v in init_val.items()}
    out["pma_init"]["init_val_vs_latest"] = {
        k: paired(init_val[k], init_val["latest"]) for k in INITS if k != "latest"
    }
    for task, (_, steps) in TASKS.items():
        per = {k: [task_metrics(s["runs"][f"{task}_{k}"], steps) for s in seeds] for k in INITS}
        metrics = list(per["latest"][0])
        out["pma_init"][task] = {
            "steps": steps,
            "inits": {
                k: {m: mean_std([r[m] for r in rows]) for m in metrics} for k, rows in per.items()
            },
            "comparisons": [
                {
                    "a": k,
                    "b": "latest",
                    "metric": m,
                    **paired([r[m] for r in per[k]], [r[m] for r in per["latest"]]),
                }
                for k in INITS
                if k != "latest"
                for m in metrics
            ],
        }
    return out


def main() -> None:
    from figures import figures
    from render import fill_readme, results_md

    seeds = load_seeds()
    s = summarize(seeds)
    (HERE / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    (HERE / "results.md").write_text("# PMA-init: every table\n\n" + results_md(s) + "\n")
    figures(seeds, s)
    fill_readme(s)
    print(
        f"{len(seeds)} seeds -> summary.json, results.md, spike_recovery.png, ct_sft.png, README.md"
    )


if __name__ == "__main__":
    main()
