"""Summarise experiments/pma_init/results/seed*.json: summary.json, results.md, figures, README.

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
import re
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


# --- rendering ---------------------------------------------------------------------------------


def pm(d: dict, nd: int = 4) -> str:
    return f"{d['mean']:.{nd}f} ± {d['std']:.{nd}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def verdict_words(c: dict) -> str:
    word = {"A lower": "lower", "B lower": "higher"}.get(c["verdict"])
    return f"**{word}, outside the seed spread**" if word else "**within noise**"


def cmp_cell(c: dict) -> str:
    lo, hi = c["ci95"]
    return (
        f"{c['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}], A lower on {c['a_lower_on']}/{c['n']}: "
        f"{verdict_words(c)}"
    )


def recovery_md(s: dict, sc: str, pairs: bool = True) -> str:
    r = s["recovery"][sc]
    b = r["branch"]
    head = [
        "arm",
        f"val @ {b + 10}",
        f"mean val {b + 10}–{END_STABLE}",
        f"val @ {END} (after the decay)",
        f"max train loss > {b}",
    ]
    rows = [
        [ARMS[a], *(pm(m[k]) for k in ("val_first", "val_mean_stable", "val_600")),
         pm(m["max_train_loss"], 2)]
        for a, m in r["arms"].items()
    ]  # fmt: skip
    comps = {}
    for c in r["comparisons"]:
        comps.setdefault((c["a"], c["b"]), {})[c["metric"]] = c
    crow = [
        [f"{a} − {b}", *(cmp_cell(m[k]) for k in ("val_first", "val_mean_stable", "val_600"))]
        for (a, b), m in comps.items()
    ]
    sv = r["start_val"]
    pair_head = "\n\nPaired differences A − B (mean [95% interval], negative = A lower):\n\n"
    pair_cols = ["A − B", f"val @ {b + 10}", f"mean val {b + 10}–{END_STABLE}", f"val @ {END}"]
    return (
        f"Spike injected at updates {r['spike_updates'][0]}–{r['spike_updates'][1]} (30× LR); "
        f"`recover` detected it at step {r['detected_spike_step']} on every seed and merged "
        f"checkpoints {r['merged_steps'][0]}–{r['merged_steps'][-1]} (every 10 steps); every arm "
        f"continues from step {b}. Before any training, the merge's validation loss is "
        f"{pm(sv['pma'])} against {pm(sv['last'])} for checkpoint-{b} (paired: "
        f"{cmp_cell(r['start_val_pma_minus_last'])}). The rollback arm reproduces the clean run "
        f"(largest validation-loss difference {r['rollback_vs_clean_max_abs_diff']:.1e}).\n\n"
        + table(head, rows)
        + (pair_head + table(pair_cols, crow) if pairs else "")
    )


def corrupt_md(s: dict) -> str:
    c = s["corrupt_batch"]
    steps = sorted(set(c["detected_spike_steps"]))
    merged = sorted({(m[0], m[-1]) for m in c["merged_steps"]})
    labels = {"random": "3 random-token batches (421–423), left alone", "clean": ARMS["clean"]}
    rows = [
        [labels[a], *(pm(m[k]) for k in ("val_first", "val_mean_stable", "val_600")),
         pm(m["max_train_loss"], 2)]
        for a, m in c["arms"].items()
    ]  # fmt: skip
    return (
        "**A corrupted batch instead** (`train.inject_spike.batch: random_tokens`, LR unchanged): "
        f"`recover` detected it at step(s) {', '.join(map(str, steps))} and would merge checkpoints "
        + ", ".join(f"{a}–{b}" for a, b in merged)
        + ".\n\n"
        + table(["run", "val @ 430", "mean val 430–480", "val @ 600", "max train loss > 420"], rows)
    )


def task_md(s: dict, task: str, pairs: bool = True) -> str:
    t = s["pma_init"][task]
    steps = t["steps"]
    rows = [
        [INITS[k], *(pm(m[x]) for x in ("val_10", "val_early", "val_final")),
         pm(m["grad_norm_early_max"], 3)]
        for k, m in t["inits"].items()
    ]  # fmt: skip
    comps = {}
    for c in t["comparisons"]:
        comps.setdefault(c["a"], {})[c["metric"]] = c
    pair_cols = ["A − B", "val @ 10", f"mean val 10–{EARLY}", f"val @ {steps}"]
    crow = [
        [f"{INITS[k]} − latest", *(cmp_cell(m[x]) for x in ("val_10", "val_early", "val_final"))]
        for k, m in comps.items()
    ]
    return table(
        [
            "init",
            "val @ 10",
            f"mean val 10–{EARLY}",
            f"val @ {steps}",
            f"max grad norm 1–{EARLY}",
        ],
        rows,
    ) + ("\n\n" + table(pair_cols, crow) if pairs else "")


def init_md(s: dict) -> str:
    iv = s["pma_init"]["init_val"]
    vs = s["pma_init"]["init_val_vs_latest"]
    rows = [[INITS[k], pm(iv[k]), cmp_cell(vs[k]) if k in vs else "–"] for k in INITS]
    return table(["init (step 480 of the clean run)", "pre-training val loss", "− latest"], rows)


def _say(c: dict, what: str) -> str:
    lo, hi = c["ci95"]
    return (
        f"{what}: {c['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}], lower on {c['a_lower_on']}/{c['n']} "
        f"seeds: {verdict_words(c)}"
    )


def verdicts_md(s: dict) -> str:
    """The headline comparisons, one line each, with the rule's verdict."""
    lines = []
    for sc, r in s["recovery"].items():
        b = r["branch"]
        c = {(x["a"], x["b"], x["metric"]): x for x in r["comparisons"]}
        at = f"spike at update {sc[2:]}"
        lines += [
            "- " + _say(c["x30", "clean", "val_600"], f"{at}, no intervention minus the clean run, "
                        "val @ 600"),
            "- " + _say(c["pma_fresh", "pma_newest", "val_first"], f"{at}, PMA-init with a fresh "
                        f"minus with the kept AdamW state, val @ {b + 10}"),
            "- " + _say(c["last_fresh", "last_newest", "val_first"], f"{at}, last checkpoint with a "
                        f"fresh minus with the kept AdamW state, val @ {b + 10}"),
            "- " + _say(r["start_val_pma_minus_last"], f"{at}, the merge minus checkpoint-{b} "
                        "before any training"),
            "- " + _say(c["pma_fresh", "x30", "val_600"], f"{at}, PMA-init (fresh AdamW) minus no "
                        "intervention, val @ 600"),
            "- " + _say(c["pma_newest", "last_newest", "val_first"], f"{at}, PMA-init minus "
                        f"rollback (AdamW state kept), val @ {b + 10}"),
            "- " + _say(c["pma_newest", "last_newest", "val_mean_stable"], f"{at}, PMA-init minus "
                        f"rollback (AdamW state kept), mean val {b + 10}–{END_STABLE}"),
            "- " + _say(c["pma_newest", "last_newest", "val_600"], f"{at}, PMA-init minus rollback "
                        "(AdamW state kept), val @ 600"),
            "- " + _say(c["pma_fresh", "last_fresh", "val_600"], f"{at}, PMA-init minus last "
                        "checkpoint (both fresh AdamW), val @ 600"),
        ]  # fmt: skip
        if ("x10", "clean", "val_600") in c:
            lines.append(
                "- " + _say(c["x10", "clean", "val_600"], f"{at}, a 10× spike left alone minus the "
                            "clean run, val @ 600")
            )  # fmt: skip
    if "corrupt_batch" in s:
        c = {x["metric"]: x for x in s["corrupt_batch"]["comparisons"]}
        what = "3 random-token batches at updates 421–423, left alone, minus the clean run"
        lines += [
            "- " + _say(c["val_first"], f"{what}, val @ 430"),
            "- " + _say(c["val_600"], f"{what}, val @ 600"),
        ]
    for task, (label, steps) in TASKS.items():
        t = s["pma_init"][task]
        for x in t["comparisons"]:
            if x["metric"] in ("val_early", "val_final"):
                when = f"mean val 10–{EARLY}" if x["metric"] == "val_early" else f"val @ {steps}"
                lines.append("- " + _say(x, f"{label}, {INITS[x['a']]} minus latest, {when}"))
    return "\n".join(lines)


def results_md(s: dict) -> str:
    parts = [f"Seeds: {', '.join(map(str, s['seeds']))} (n = {len(s['seeds'])}).\n"]
    for sc in s["recovery"]:
        parts += [f"## (a) Loss-spike recovery, spike at update {sc[2:]}\n", recovery_md(s, sc), ""]
    parts += ["## (b) PMA-init: the starting models\n", init_md(s), ""]
    for task, (label, _) in TASKS.items():
        parts += [f"## (b) PMA-init for {label}\n", task_md(s, task), ""]
    parts += ["## Every seed\n"]
    for sc, r in s["recovery"].items():
        rows = [
            [ARMS[a], m, " ".join(f"{x:.4f}" for x in v["seeds"])]
            for a, ms in r["arms"].items()
            for m, v in ms.items()
            if m != "max_train_loss"
        ]
        parts += [f"### (a) spike at {sc[2:]}\n", table(["arm", "metric", "per seed"], rows), ""]
    for task in TASKS:
        t = s["pma_init"][task]
        rows = [
            [INITS[k], m, " ".join(f"{x:.4f}" for x in v["seeds"])]
            for k, ms in t["inits"].items()
            for m, v in ms.items()
        ]
        parts += [f"### (b) {task}\n", table(["init", "metric", "per seed"], rows), ""]
    return "\n".join(parts)


def _band(ax, steps: list[int], per_step: list[list[float]], label: str, **kw) -> None:
    """Mean over seeds as a line, ± one std as a shaded band."""
    m = [statistics.fmean(y) for y in per_step]
    sd = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in per_step]
    (line,) = ax.plot(steps, m, label=label, **kw)
    lo = [x - e for x, e in zip(m, sd, strict=True)]
    hi = [x + e for x, e in zip(m, sd, strict=True)]
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)


def figures(seeds: list[dict], s: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def val_band(ax, key: str, label: str, lo: int = 0, **kw) -> None:
        steps = [st for st in seeds[0]["runs"][key]["val_steps"] if st >= lo]
        _band(ax, steps, [[val_at(x["runs"][key])[st] for x in seeds] for st in steps], label, **kw)

    scs = list(s["recovery"])
    fig, axes = plt.subplots(2, len(scs), figsize=(6.5 * len(scs), 8.5), squeeze=False)
    for ax, sc in zip(axes[1], scs, strict=True):
        base = f"{sc}_last_newest"
        steps = seeds[0]["runs"][base]["val_steps"]
        for a, color in COLORS.items():
            if a != "last_newest" and f"{sc}_{a}" in seeds[0]["runs"]:
                diffs = [
                    [
                        val_at(x["runs"][f"{sc}_{a}"])[st] - val_at(x["runs"][base])[st]
                        for x in seeds
                    ]
                    for st in steps
                ]
                _band(ax, steps, diffs, f"{ARMS[a]} − rollback", color=color)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-0.05, 0.15)
        ax.set_title("paired difference to the rollback (= clean run); mean ± std over seeds")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax, sc in zip(axes[0], scs, strict=True):
        b = s["recovery"][sc]["branch"]
        for a, color in COLORS.items():
            if f"{sc}_{a}" in seeds[0]["runs"]:
                lo = b - 100 if a.startswith("x") else 0
                val_band(ax, f"{sc}_{a}", ARMS[a], lo=lo, color=color)
        # drawn last: after the branch it lies exactly on the rollback arm
        val_band(ax, "clean", ARMS["clean"], lo=b - 100, color="k", ls=":", lw=1)
        ax.set_ylim(1.0, 1.6)
        ax.set_title(
            f"30x LR at updates {sc[2:]}-{int(sc[2:]) + 2}; mean ± std, {len(seeds)} seeds"
        )
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.axvline(b, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "spike_recovery.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for col, (task, (label, _)) in enumerate(TASKS.items()):
        ax = axes[0][col]
        for k in INITS:
            val_band(ax, f"{task}_{k}", INITS[k], lo=20)
        ax.set_title(f"{label}: validation loss, mean ± std, {len(seeds)} seeds")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        vsteps = seeds[0]["runs"][f"{task}_latest"]["val_steps"]
        for k in [k for k in INITS if k != "latest"]:
            diffs = [
                [
                    val_at(x["runs"][f"{task}_{k}"])[st] - val_at(x["runs"][f"{task}_latest"])[st]
                    for x in seeds
                ]
                for st in vsteps
            ]
            _band(ax, vsteps, diffs, f"{INITS[k]} − latest")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title("paired difference (negative = the merge is better)")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "ct_sft.png", dpi=110)
    plt.close(fig)


def fill_readme(s: dict) -> None:
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8")
    body = "\n".join(
        [
            f"Seeds {', '.join(map(str, s['seeds']))} (n = {len(s['seeds'])}); mean ± sample std "
            "over seeds; intervals are the 95% t-intervals of the paired mean differences.\n",
            "### Verdicts\n",
            "Paired difference A minus B (negative: A has the lower validation loss), mean "
            "[95% interval], and the rule's verdict:\n",
            verdicts_md(s) + "\n",
            "### (a) Loss-spike recovery\n",
            *(
                f"**Spike at update {sc[2:]}.** " + recovery_md(s, sc, pairs=False) + "\n"
                for sc in s["recovery"]
            ),
            *([corrupt_md(s) + "\n"] if "corrupt_batch" in s else []),
            "### (b) PMA-init for continued training and SFT\n",
            "The starting models (validation loss on the pre-training validation blocks):\n",
            init_md(s) + "\n",
            *(
                f"**{label}**, {steps} steps:\n\n" + task_md(s, t, pairs=False) + "\n"
                for t, (label, steps) in TASKS.items()
            ),
        ]
    )
    new, n = re.subn(
        r"(<!-- results:begin -->\n).*?(<!-- results:end -->)",
        lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2),
        text,
        flags=re.S,
    )
    if n != 1:
        raise SystemExit(
            f"{readme}: needs one <!-- results:begin --> ... <!-- results:end --> block"
        )
    readme.write_text(new, encoding="utf-8")


def main() -> None:
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
