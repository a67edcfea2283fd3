"""Tables and figures of the RL experiment from the GRPO runs' metrics.jsonl files (run.py --stage report).

Every seed of every variant is reported; the headline is the final evaluation (greedy, held-out
puzzles) with mean ± sample standard deviation over seeds. Nothing is selected by best step.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from run import SLUG, VARIANTS

from pmalopti.runtime.runlog import metrics_path, read_metrics

BUCKETS = ("p<0.25", "0.25<=p<0.5", "0.5<=p<0.75", "p>=0.75")
BUCKET_TEXT = ("< 0.25", "0.25–0.5", "0.5–0.75", "≥ 0.75")
COLORS = {"GRPO": "tab:gray", "+AR": "tab:blue", "+Lopti": "tab:orange", "+AR+Lopti": "tab:green"}


def read_log(run: Path) -> list[dict]:
    return read_metrics(run)  # metrics.jsonl (log.jsonl in runs made before it was renamed)


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: list[float], digits: int = 3) -> str:
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def accuracies(r: dict) -> dict[str, float]:
    """Overall and per-number-of-people accuracy of one evaluation record."""
    per = {k.rsplit("/", 1)[1]: v for k, v in r.items() if k.startswith("eval/accuracy/")}
    return dict(sorted(per.items(), key=lambda kv: int(kv[0]))) | {"all": r["eval/accuracy"]}


def run_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def n_eval(run: Path) -> int | str:
    """Number of evaluation samples: the eval files' rows, else task.eval_size."""
    t = run_config(run)["task"]
    if t.get("eval_path"):
        return sum(len(Path(p).read_text().splitlines()) for p in t["eval_path"].split(","))
    return t["eval_size"]


def collect(runs: Path, task: str, seeds: list[int], steps: int) -> dict:
    """Per variant and seed: the step-0 and final evaluations, curves, diagnostics, timings."""
    out: dict = {}
    for v in VARIANTS:
        for s in seeds:
            run = runs / "grpo" / task / f"{SLUG[v]}-s{s}"
            if not metrics_path(run).exists():
                continue
            recs = read_log(run)
            evals = [r for r in recs if "eval/accuracy" in r]
            final = [r for r in evals if r["step"] == steps]
            if not final:  # an unfinished run is reported as missing, never as a result
                continue
            train = [r for r in recs if "reward/mean" in r]
            # A diagnostic micro-batch whose advantages are all 0 (every group tied) has no gradient
            # and all-zero shares: it says nothing about where the gradient goes, so it is skipped.
            diag = [
                r
                for r in recs
                if f"diag/grad_share/{BUCKETS[0]}" in r
                and sum(r[f"diag/grad_share/{b}"] for b in BUCKETS) > 0
            ]
            low = [r["lopti/low_token_share"] for r in train if "lopti/low_token_share" in r]
            out.setdefault(v, {})[s] = {
                "start": accuracies(evals[0]) if evals[0]["step"] == 0 else None,
                "final": accuracies(final[0]),
                "eval_curve": [(r["step"], r["eval/accuracy"]) for r in evals],
                "reward_curve": [(r["step"], r["reward/mean"]) for r in train],
                "length_curve": [(r["step"], r["response_length/mean"]) for r in train],
                "train_acc_last10": statistics.fmean(r["accuracy"] for r in train[-10:]),
                "reward_last10": statistics.fmean(r["reward/mean"] for r in train[-10:]),
                "response_length": statistics.fmean(r["response_length/mean"] for r in train),
                "token_share": {
                    b: _mean([r[f"diag/token_share/{b}"] for r in diag]) for b in BUCKETS
                },
                "grad_share": {
                    b: _mean([r[f"diag/grad_share/{b}"] for r in diag]) for b in BUCKETS
                },
                "diag_steps": len(diag),
                "low_token_share": statistics.fmean(low) if low else None,
                "sec_per_step": statistics.fmean(r["time/step"] for r in train),
                "update_sec": statistics.fmean(r["time/update"] for r in train),
                "final_eval_reward": final[0]["eval/reward_mean"],
                "final_eval_length": final[0]["eval/response_length"],
                "length_first": train[0]["response_length/mean"],
                "length_last5": statistics.fmean(r["response_length/mean"] for r in train[-5:]),
                "n_eval": n_eval(run),
                "temperature": run_config(run)["rollout"]["temperature"],
            }
    return out


UNITS = {"kk": ("people", "held-out puzzles"), "arith": ("digits", "held-out problems")}
UNITS["arith-lr1e-4"] = UNITS["arith"]


def with_start(curve: list, per_seed_start: dict | None) -> list:
    """Prepend the shared step-0 point (same model, greedy, same puzzles) to a curve without one."""
    if (curve and curve[0][0] == 0) or per_seed_start is None:
        return curve
    return [(0, per_seed_start["all"]), *curve]


def tables(res: dict, task: str, seeds: list[int], steps: int) -> str:
    unit, what = UNITS[task]
    first = next(iter(next(iter(res.values())).values()))
    cols = list(first["final"])  # difficulties ("2", "3", ...) then "all"
    n_eval = first["n_eval"]
    head = (
        "| variant | "
        + " | ".join(f"{c} {unit}" if c != "all" else "all" for c in cols)
        + " | seeds |"
    )
    sep = "|---|" + "---:|" * len(cols) + "---:|"
    lines = [
        f"**Greedy accuracy on {n_eval} {what} after {steps} GRPO steps** (mean ± std over seeds)",
        "",
        head,
        sep,
    ]
    starts = [r["start"] for v in res.values() for r in v.values() if r["start"]]
    if starts:
        lines.append(
            "| fine-tuned model (step 0) | "
            + " | ".join(fmt([st[c] for st in starts]) for c in cols)
            + f" | {len(starts)} evals |"
        )
    for v, per_seed in res.items():
        cells = [fmt([per_seed[s]["final"][c] for s in per_seed]) for c in cols]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {len(per_seed)} |")
    lines += [
        "",
        f"**Every seed** (final greedy accuracy, all; {' / '.join(cols[:-1])} {unit} in brackets)",
        "",
    ]
    lines += [
        "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---:|" * len(seeds),
    ]
    for v, per_seed in res.items():
        cells = []
        for s in seeds:
            r = per_seed.get(s)
            if r is None:
                cells.append("missing")
                continue
            f = r["final"]
            cells.append(f"{f['all']:.3f} ({' / '.join(f'{f[c]:.2f}' for c in cols[:-1])})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"**Training statistics** (mean over seeds; rollouts sampled at T = {first['temperature']})",
        "",
        "| variant | train accuracy, last 10 steps | train reward, last 10 steps | final eval reward | "
        "response tokens, first step → last 5 steps | final eval response tokens | Lopti low-token share | "
        "s/step | update s/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v, per_seed in res.items():
        rs = list(per_seed.values())
        low = [r["low_token_share"] for r in rs if r["low_token_share"] is not None]
        lines.append(
            f"| {v} | {fmt([r['train_acc_last10'] for r in rs])} | {fmt([r['reward_last10'] for r in rs])} | "
            f"{fmt([r['final_eval_reward'] for r in rs])} | "
            f"{statistics.fmean(r['length_first'] for r in rs):.1f} → {fmt([r['length_last5'] for r in rs], 1)} | "
            f"{fmt([r['final_eval_length'] for r in rs], 1)} | "
            f"{(f'{statistics.fmean(low):.3f}' if low else '–')} | "
            f"{statistics.fmean(r['sec_per_step'] for r in rs):.2f} | {statistics.fmean(r['update_sec'] for r in rs):.2f} |"
        )
    lines += [
        "",
        "**Token-probability buckets** (the paper's Fig. 1; mean over the diagnostic steps with a non-zero "
        "gradient, then over seeds; `seeds` = runs with at least one): share of "
        "response tokens and share of the policy-gradient norm per π_old bucket, and the per-token gradient "
        "norm relative to the average token (grad share / token share, averaged over seeds)",
        "",
        "| variant | quantity | " + " | ".join(f"π_old {b}" for b in BUCKET_TEXT) + " | seeds |",
        "|---|---|" + "---:|" * len(BUCKETS) + "---:|",
    ]
    for v, per_seed in res.items():
        # runs whose diagnostic micro-batches all had zero advantages carry no gradient shares
        rs = [r for r in per_seed.values() if r["diag_steps"]]
        if not rs:
            continue
        ts = [statistics.fmean(r["token_share"][b] for r in rs) for b in BUCKETS]
        gs = [statistics.fmean(r["grad_share"][b] for r in rs) for b in BUCKETS]
        lines.append(
            f"| {v} | token share | " + " | ".join(f"{x:.3f}" for x in ts) + f" | {len(rs)} |"
        )
        lines.append(
            f"| {v} | gradient-norm share | "
            + " | ".join(f"{x:.3f}" for x in gs)
            + f" | {len(rs)} |"
        )
        rel = [
            _mean([r["grad_share"][b] / r["token_share"][b] for r in rs if r["token_share"][b] > 0])
            for b in BUCKETS
        ]
        lines.append(
            f"| {v} | per-token norm (relative) | "
            + " | ".join(f"{x:.2f}" for x in rel)
            + f" | {len(rs)} |"
        )
    return "\n".join(lines) + "\n"


def _sd(a):
    """Sample std over seeds (rows), or no error bar for a single seed."""
    return a.std(0, ddof=1) if len(a) > 1 else None


def figures(res: dict, out: Path, task: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    # Fig. 1 analogue: token share vs gradient-norm share per π_old bucket, plain GRPO; and how
    # AR / Lopti runs' gradient shares compare (AR shrinks low-probability tokens' advantages).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(BUCKETS))
    g = [r for r in res.get("GRPO", {}).values() if r["diag_steps"]]
    if g:
        ts = np.array([[r["token_share"][b] for b in BUCKETS] for r in g])
        gs = np.array([[r["grad_share"][b] for b in BUCKETS] for r in g])
        axes[0].bar(
            x - 0.2, ts.mean(0), 0.4, yerr=_sd(ts), label="share of tokens", color="tab:gray"
        )
        axes[0].bar(
            x + 0.2, gs.mean(0), 0.4, yerr=_sd(gs), label="share of gradient norm", color="tab:red"
        )
        axes[0].set_title(f"GRPO: tokens vs gradient norm per π_old bucket ({len(g)} runs)")
        axes[0].set_xticks(x, BUCKET_TEXT)
        axes[0].set_xlabel("π_old of the sampled token")
        axes[0].legend()
    w = 0.8 / max(len(res), 1)
    for i, (v, per_seed) in enumerate(res.items()):
        # runs whose diagnostic micro-batches all had zero advantages carry no gradient shares
        rs = [r for r in per_seed.values() if r["diag_steps"]]
        if not rs:
            continue
        rel = np.array(
            [
                [
                    r["grad_share"][b] / r["token_share"][b] if r["token_share"][b] > 0 else np.nan
                    for b in BUCKETS
                ]
                for r in rs
            ]
        )
        axes[1].bar(x - 0.4 + w * (i + 0.5), np.nanmean(rel, 0), w, label=v, color=COLORS[v])
    axes[1].axhline(1.0, color="k", lw=0.8, ls=":")
    axes[1].set_title("per-token gradient norm / average token")
    axes[1].set_xticks(x, BUCKET_TEXT)
    axes[1].set_xlabel("π_old of the sampled token")
    axes[1].legend()
    fig.tight_layout()
    p = out / f"{task}_token_prob_buckets.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    starts = {s: r["start"] for per_seed in res.values() for s, r in per_seed.items() if r["start"]}
    for v, per_seed in res.items():
        curves = [with_start(r["eval_curve"], starts.get(s)) for s, r in per_seed.items()]
        steps = [s for s, _ in curves[0]]
        ys = np.array([[a for _, a in c] for c in curves])
        axes[0].plot(steps, ys.mean(0), marker="o", label=v, color=COLORS[v])
        if len(ys) > 1:
            axes[0].fill_between(
                steps,
                ys.mean(0) - ys.std(0, ddof=1),
                ys.mean(0) + ys.std(0, ddof=1),
                alpha=0.15,
                color=COLORS[v],
            )
        rc = np.array([[y for _, y in r["reward_curve"]] for r in per_seed.values()])
        k = 5  # moving average over steps, for readability only
        sm = np.convolve(rc.mean(0), np.ones(k) / k, mode="valid")
        axes[1].plot(np.arange(k, k + len(sm)), sm, label=v, color=COLORS[v])
        lc = np.array([[y for _, y in r["length_curve"]] for r in per_seed.values()])
        axes[2].plot(np.arange(1, 1 + lc.shape[1]), lc.mean(0), label=v, color=COLORS[v])
    axes[0].set_title("held-out greedy accuracy (mean ± std over seeds)")
    axes[0].set_xlabel("GRPO step")
    axes[1].set_title("training reward (rollout mean, 5-step moving average)")
    axes[1].set_xlabel("GRPO step")
    axes[2].set_title("response length of the rollouts (tokens, mean over seeds)")
    axes[2].set_xlabel("GRPO step")
    for a in axes:
        a.legend()
    fig.tight_layout()
    p = out / f"{task}_curves.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def base_summary(runs: Path, task: str) -> dict:
    """The pre-training and SFT stages' last losses, read from their metrics.jsonl."""
    out = {}
    for name in (
        ("pretrain", "sft") if task == "kk" else ("arith_pretrain", "arith_sft", "arith_sft2")
    ):
        f = runs / name / "metrics.jsonl"
        if not f.exists():
            continue
        recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        vals = [r for r in recs if "val_loss" in r]
        out[name] = {
            "steps": recs[-1].get("step"),
            "train_loss_last": recs[-1].get("loss"),
            "val_loss": [(r["step"], r["val_loss"]) for r in vals],
            "seconds": sum(r.get("step_time", 0.0) for r in recs),
        }
    return out


def write_report(runs: Path, out: Path, *, task: str, seeds: list[int], steps: int) -> None:
    from pmalopti.runtime.fs import atomic_write_json, atomic_write_text

    res = collect(runs, task, seeds, steps)
    if not res:
        raise SystemExit(f"{runs}/grpo/{task}: no finished GRPO run to report")
    out.mkdir(parents=True, exist_ok=True)
    md = tables(res, task, seeds, steps)
    atomic_write_text(out / f"results_{task}.md", md)
    atomic_write_json(
        out / f"summary_{task}.json",
        {
            "steps": steps,
            "seeds": seeds,
            "base": base_summary(runs, task),
            "runs": {v: {str(s): r for s, r in d.items()} for v, d in res.items()},
        },
    )
    for p in figures(res, out, task):
        print(f"wrote {p}")
    print(md)
