"""PMA grid on the tiny pre-training run: method x N x V, merged vs live vs annealed (arXiv 2505.12082).

The CPU analogue of the paper's Figs. 3-5. For each seed:

1. train   `pmalopti pretrain` with experiments/pma_grid/pretrain_const.yaml: a constant-LR run
           (30 warmup steps, then lr 1e-2 to step 1500) saving a checkpoint every 10 steps;
           two annealed branches resume its checkpoint-600 and checkpoint-1200 under a WSD
           config whose last 20% decays linearly to 0 (ends at 750 and 1500 steps), so each
           annealed model has seen exactly the tokens of the constant-LR checkpoint it is
           compared with (the run is deterministic on CPU; the branch is the full WSD run);
2. eval    every checkpoint's validation loss, and in memory (pmalopti.lm.evaluate: float32
           weighted sum of the saved checkpoints) the merges ending at steps 750, 1100 and 1500
           for method in {SMA, EMA a=0.1, EMA a=0.2, WMA} x N in {3, 6, 10} x V in
           {10, 20, 40, 80} steps; a window is used only if all its checkpoints are in the
           stable phase (step >= 30);
3. report  results/<tag>/results.md (tables: mean +- std over every seed, plus every seed),
           summary.json and the PNG figures.

    python experiments/pma_grid/run.py                          # 5 seeds, 2 processes at a time
    python experiments/pma_grid/run.py --stage report           # tables/figures from results/
    python experiments/pma_grid/run.py --tag lr3e-3 --set optim.lr=3e-3 --seeds 0 1 2   # ablation

Run folders (checkpoints) go to runs/pma_grid/<tag>/seed<S>/ (git-ignored); the per-seed
evaluation JSON is copied to experiments/pma_grid/results/<tag>/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = HERE / "pretrain_const.yaml"

METHODS = ("sma", "ema:0.1", "ema:0.2", "wma")
NS = (3, 6, 10)
VS = (10, 20, 40, 80)  # steps between merged checkpoints (multiples of train.save_every)
POINTS = (750, 1100, 1500)  # merge points: the newest merged checkpoint
ANNEALS = ((600, 750), (1200, 1500))  # (branch from, end): decay over the last 20% of `end`
DEFAULT = ("sma", 10, 20)  # the pre-declared headline merge (the paper's SMA, N = 10)
VAL_BLOCKS = 160  # held-out blocks of 64 tokens scored per model (10,080 tokens; CPU budget)
NOISE_SPAN = 200  # steps before each point where every checkpoint is scored (noise statistics)
CURVE_EVERY = 50  # elsewhere the live and annealed curves are scored every this many steps


# --- stage 1: training ----------------------------------------------------------------------


def pmalopti(argv: list[str], log: Path) -> None:
    """Run one `pmalopti` command in a child process with one torch thread; output to `log`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ pmalopti " + " ".join(argv) + "\n")
        out.flush()
        rc = subprocess.call(
            [sys.executable, "-m", "pmalopti", *argv],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if rc != 0:
        raise RuntimeError(f"pmalopti {' '.join(argv)} failed with exit code {rc}; see {log}")


def train_seed(run: Path, seed: int, sets: list[str]) -> dict:
    """The constant-LR run and its annealed branches; finished parts are skipped."""
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    common = ["--config", str(CONFIG), "--set", f"seed={seed}"]
    for s in sets:
        common += ["--set", s]
    times = {}
    const = run / "const"
    last = max(e for _, e in ANNEALS)
    if not (const / f"checkpoint-{last}" / "config.json").is_file():
        t0 = time.perf_counter()
        pmalopti(["pretrain", *common, "-o", str(const), "--force"], log)
        times["const"] = time.perf_counter() - t0
    for start, end in ANNEALS:
        branch = run / f"anneal-{end}"
        if (branch / f"checkpoint-{end}" / "config.json").is_file():
            continue
        # A branch folder holding only the trunk's data and checkpoint-<start>: `--resume` then
        # restores weights, AdamW state, RNG, step and tokens exactly, and the WSD config below
        # has the same LR as the trunk before `start` (stable = peak), so this IS the WSD run.
        if branch.exists():
            shutil.rmtree(branch)
        branch.mkdir()
        shutil.copytree(const / "data", branch / "data")
        shutil.copytree(const / f"checkpoint-{start}", branch / f"checkpoint-{start}")
        t0 = time.perf_counter()
        pmalopti(
            [
                "pretrain",
                *common,
                "--set",
                f"train.steps={end}",
                "--set",
                f"schedule.decay_steps={end - start}",
                "-o",
                str(branch),
                "--resume",
            ],
            log,
        )
        times[f"anneal-{end}"] = time.perf_counter() - t0
    return times


# --- stage 2: evaluation --------------------------------------------------------------------


def merge_window(point: int, n: int, v: int) -> list[int]:
    """Steps of the N checkpoints V apart ending at `point`, oldest first."""
    return [point - (n - 1 - i) * v for i in range(n)]


def _trainer_tokens(ckpt: Path) -> int:
    return int(json.loads((ckpt / "trainer_state.json").read_text())["num_input_tokens_seen"])


def log_summary(metrics: list[dict], warmup: int) -> dict:
    """What a training log says about its last 200 steps (after warmup): loss, noise, speed.

    For the constant-LR trunk these are stable-phase steps; for an annealed branch (whose log
    starts at the branch point) they are its decay steps.
    """
    import statistics

    after = [r for r in metrics if r["step"] > warmup]
    tail = after[-200:]
    return {
        "steps": metrics[-1]["step"],
        "tokens": metrics[-1]["tokens"],
        "mean_step_time_s": statistics.fmean(r["step_time"] for r in metrics),
        "train_loss_last200_mean": statistics.fmean(r["loss"] for r in tail),
        "train_loss_last200_std": statistics.pstdev(r["loss"] for r in tail),
        "grad_norm_last200_mean": statistics.fmean(r["grad_norm"] for r in tail),
        "clipped_share": sum(r["grad_norm"] > 1.0 for r in after) / max(len(after), 1),
    }


def evaluate_seed(run: Path) -> dict:
    import torch

    from pmalopti.config import load_config
    from pmalopti.lm.evaluate import (
        blocks_loss,
        load_into,
        merged_state_dict,
        method_weights,
    )
    from pmalopti.lm.pretrain import PretrainConfig, val_blocks_of
    from pmalopti.runtime.checkpoint import list_checkpoints
    from pmalopti.runtime.hf import load_model, load_tokenizer
    from pmalopti.runtime.runlog import read_metrics

    torch.set_num_threads(1)
    const = run / "const"
    cfg = load_config(PretrainConfig, const / "config.yaml")
    warmup = cfg.schedule.warmup_steps
    ckpts = dict(list_checkpoints(const))
    newest = ckpts[max(ckpts)]
    tok = load_tokenizer(newest)
    val = val_blocks_of(const, tok, cfg.data.block_size, min(cfg.data.max_val_blocks, VAL_BLOCKS))
    model = load_model(newest)
    dev = torch.device("cpu")

    def loss(paths: list[Path], weights: list[float]) -> float:
        load_into(model, merged_state_dict(paths, weights))
        return blocks_loss(model, val, 64, dev)

    from tqdm.auto import tqdm

    def wanted(step: int) -> bool:
        near = any(p - NOISE_SPAN <= step <= p for p in POINTS)
        return near or step % CURVE_EVERY == 0 or step == warmup

    live = [
        {"step": s, "tokens": _trainer_tokens(p), "val_loss": loss([p], [1.0])}
        for s, p in tqdm(sorted(ckpts.items()), desc="live checkpoints", file=sys.stderr)
        if wanted(s)
    ]
    anneals = []
    for start, end in ANNEALS:
        branch = run / f"anneal-{end}"
        curve = [
            {"step": s, "tokens": _trainer_tokens(p), "val_loss": loss([p], [1.0])}
            for s, p in list_checkpoints(branch)
            if s > start and ((s - start) % 30 == 0 or s == end)
        ]
        anneals.append(
            {
                "start": start,
                "end": end,
                "curve": curve,
                "log": log_summary(read_metrics(branch / "metrics.jsonl"), warmup),
            }
        )
    merges = []
    grid = [(p, m, n, v) for p in POINTS for m in METHODS for n in NS for v in VS]
    for point, method, n, v in tqdm(grid, desc="merges", file=sys.stderr):
        steps = merge_window(point, n, v)
        if steps[0] < warmup or any(s not in ckpts for s in steps):
            continue  # the window would reach into warmup: not a stable-phase merge
        merges.append(
            {
                "point": point,
                "method": method,
                "n": n,
                "v": v,
                "steps": steps,
                "val_loss": loss([ckpts[s] for s in steps], method_weights(method, n)),
            }
        )
    return {
        "run": str(run),
        "seed": cfg.seed,
        "config": {
            "lr": cfg.optim.lr,
            "batch_size": cfg.train.batch_size,
            "block_size": cfg.data.block_size,
            "warmup_steps": warmup,
            "save_every": cfg.train.save_every,
            "steps": cfg.train.steps,
        },
        "val_tokens": int(val.numel() - val.size(0)),
        "val_blocks": int(val.size(0)),
        "params": sum(p.numel() for p in model.parameters()),
        "live": live,
        "anneals": anneals,
        "merges": merges,
        "log": log_summary(read_metrics(const / "metrics.jsonl"), warmup),
    }


def seed_job(runs: Path, results: Path, seed: int, sets: list[str]) -> None:
    """One seed: train (skipping what exists), evaluate, copy the JSON into results/."""
    run = runs / f"seed{seed}"
    t0 = time.perf_counter()
    times = train_seed(run, seed, sets)
    t1 = time.perf_counter()
    out = evaluate_seed(run)
    out["wall_s"] = {"train": t1 - t0, **times, "eval": time.perf_counter() - t1}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"seed{seed}.json").write_text(json.dumps(out, indent=1))


# --- stage 3: report ------------------------------------------------------------------------


def load_results(results: Path) -> list[dict]:
    files = sorted(results.glob("seed*.json"), key=lambda p: int(p.stem[4:]))
    if not files:
        raise FileNotFoundError(f"no seed*.json in {results}; run the train/eval stage first")
    return [json.loads(f.read_text()) for f in files]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def _pm(xs: list[float], fmt: str = ".4f") -> str:
    m, sd = _mean_std(xs)
    return f"{m:{fmt}} ± {sd:{fmt}}"


def tables(res: list[dict]) -> dict:
    """Everything the markdown and figures need, from the per-seed JSON."""
    live = [{r["step"]: r["val_loss"] for r in s["live"]} for s in res]
    merged = [
        {(m["point"], m["method"], m["n"], m["v"]): m["val_loss"] for m in s["merges"]} for s in res
    ]
    annealed = [{a["end"]: a["curve"][-1]["val_loss"] for a in s["anneals"]} for s in res]
    gain = {}  # (point, method, n, v) -> [live - merged per seed]
    for key in merged[0]:
        if all(key in mg for mg in merged):
            gain[key] = [lv[key[0]] - mg[key] for lv, mg in zip(live, merged, strict=True)]
    return {"live": live, "merged": merged, "annealed": annealed, "gain": gain}


def noise_stats(res: list[dict], point: int, span: int = NOISE_SPAN) -> list[dict]:
    """Per seed: how much the live validation loss jitters between checkpoints before `point`.

    The residual std after a linear fit over the last `span` steps is the fluctuation that
    averaging can remove; the trend is what it cannot (a merge lags behind it).
    """
    out = []
    for s in res:
        pts = [(r["step"], r["val_loss"]) for r in s["live"] if point - span <= r["step"] <= point]
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        resid = [y - (my + slope * (x - mx)) for x, y in pts]
        out.append(
            {
                "resid_std": math.sqrt(sum(r * r for r in resid) / (n - 2)),
                "slope_per_100": slope * 100,
                "best_live_in_span": min(y for _, y in pts),
            }
        )
    return out


def method_name(m: str) -> str:
    name, _, a = m.partition(":")
    return f"EMA α={a}" if a else name.upper()


def write_markdown(res: list[dict], t: dict, out: Path, tag: str, figs: dict[str, str]) -> str:
    seeds = [s["seed"] for s in res]
    cfg = res[0]["config"]
    tok_per_step = cfg["batch_size"] * cfg["block_size"]
    live, gain, annealed = t["live"], t["gain"], t["annealed"]
    dm, dn, dv = DEFAULT
    L: list[str] = []
    L.append(f"# PMA grid — `{tag}` (seeds {', '.join(map(str, seeds))})\n")
    L.append(
        f"{res[0]['params']:,}-parameter Llama-style model, lr {cfg['lr']:g} constant after "
        f"{cfg['warmup_steps']} warmup steps, {tok_per_step:,} tokens per step, checkpoint every "
        f"{cfg['save_every']} steps; validation loss on {res[0]['val_tokens']:,} held-out tokens "
        f"(seed 0; each seed has its own corpus, split and init). Mean ± sample std over "
        f"{len(res)} seeds; *gain* = live − merged validation loss (positive = the merge is better). "
        f"`k/{len(res)}` = seeds where the merge beats the live checkpoint.\n"
    )
    # Table 1: headline
    L.append("## 1. Merged (constant LR) vs live vs annealed, same tokens\n")
    hdr = [
        "step",
        "tokens",
        "live",
        *[f"{method_name(m)} N={dn} V={dv}" for m in METHODS],
        "annealed (WSD)",
    ]
    rows = []
    for p in POINTS:
        row = [str(p), f"{p * tok_per_step:,}", _pm([lv[p] for lv in live])]
        for m in METHODS:
            key = (p, m, dn, dv)
            row.append(_pm([mg[key] for mg in t["merged"]]) if key in gain else "n/a")
        ends = [a.get(p) for a in annealed]
        row.append(_pm(ends) if all(e is not None for e in ends) else "–")
        rows.append(row)
    L.append(_md(hdr, rows))
    L.append(
        "\nAnnealed = the same run's WSD branch: from the constant-LR checkpoint at 80% of the "
        "steps shown, LR decayed linearly to 0 over the last 20%, so it has seen exactly the "
        "tokens of the live and merged models in its row.\n"
    )
    # Table 1b: gains vs the anneal
    L.append("\n### Gain over the live checkpoint, and the share of the anneal's gain\n")
    hdr = [
        "step",
        "merge",
        "gain (live − merged)",
        "k/seeds",
        "anneal gain (live − annealed)",
        "merge gain / anneal gain",
    ]
    rows = []
    for p in POINTS:
        an = [a.get(p) for a in annealed]
        has_an = all(e is not None for e in an)
        for m in METHODS:
            key = (p, m, dn, dv)
            if key not in gain:
                continue
            g = gain[key]
            row = [
                str(p),
                f"{method_name(m)} N={dn} V={dv}",
                _pm(g),
                f"{sum(x > 0 for x in g)}/{len(g)}",
            ]
            if has_an:
                ag = [lv[p] - e for lv, e in zip(live, an, strict=True)]
                ratio = [x / y for x, y in zip(g, ag, strict=True)]
                row += [_pm(ag), _pm(ratio, ".2f")]
            else:
                row += ["–", "–"]
            rows.append(row)
    L.append(_md(hdr, rows))
    # Table 2: full grid
    for p in POINTS:
        L.append(
            f"\n## 2. Gain over the live checkpoint at step {p} ({p * tok_per_step:,} tokens), every method × N × V\n"
        )
        L.append(
            f"V in steps ({tok_per_step:,} tokens per step); live loss at step {p}: "
            f"{_pm([lv[p] for lv in live])}. Cells: gain mean ± std (k/{len(res)} seeds better than live); "
            "n/a = the window would reach into warmup.\n"
        )
        hdr = ["method", "N", *[f"V={v} ({v * tok_per_step // 1000}k tok)" for v in VS]]
        rows = []
        for m in METHODS:
            for n in NS:
                row = [method_name(m), str(n)]
                for v in VS:
                    g = gain.get((p, m, n, v))
                    row.append(f"{_pm(g)} ({sum(x > 0 for x in g)}/{len(g)})" if g else "n/a")
                rows.append(row)
        L.append(_md(hdr, rows))
    # Table 3: best cell
    L.append("\n## 3. Best grid cell per point (chosen on the same validation set: optimistic)\n")
    hdr = ["step", "best cell", "gain", "k/seeds", "worst cell", "gain"]
    rows = []
    for p in POINTS:
        cells = {k: v for k, v in gain.items() if k[0] == p}
        if not cells:
            continue
        best = max(cells, key=lambda k: _mean_std(cells[k])[0])
        worst = min(cells, key=lambda k: _mean_std(cells[k])[0])
        rows.append(
            [
                str(p),
                f"{method_name(best[1])} N={best[2]} V={best[3]}",
                _pm(cells[best]),
                f"{sum(x > 0 for x in cells[best])}/{len(res)}",
                f"{method_name(worst[1])} N={worst[2]} V={worst[3]}",
                _pm(cells[worst]),
            ]
        )
    L.append(_md(hdr, rows))
    # Table 4: noise, why
    L.append("\n## 4. How noisy is the stable phase? (why the merge helps as much as it does)\n")
    L.append(
        "Per seed, over the live checkpoints of the last 200 steps before the point: residual "
        "std of the validation loss around a linear trend (the jitter averaging can remove), the "
        "trend (loss change per 100 steps; a merge of old checkpoints lags behind it), the best "
        f"single checkpoint in that span, and the gain of the {method_name(dm)} N={dn} V={dv} merge.\n"
    )
    hdr = [
        "step",
        "seed",
        "live",
        "residual std",
        "trend /100 steps",
        "best live in span",
        f"{method_name(dm)} N={dn} V={dv}",
        "merge < best single?",
    ]
    rows = []
    for p in POINTS:
        ns = noise_stats(res, p)
        for s, st, lv, mg in zip(res, ns, live, t["merged"], strict=True):
            mv = mg.get((p, dm, dn, dv))
            rows.append(
                [
                    str(p),
                    str(s["seed"]),
                    f"{lv[p]:.4f}",
                    f"{st['resid_std']:.4f}",
                    f"{st['slope_per_100']:+.4f}",
                    f"{st['best_live_in_span']:.4f}",
                    f"{mv:.4f}" if mv is not None else "n/a",
                    ("yes" if mv < st["best_live_in_span"] else "no") if mv is not None else "n/a",
                ]
            )
    L.append(_md(hdr, rows))
    # Table 5: every seed, headline
    L.append("\n## 5. Every seed (validation loss)\n")
    hdr = [
        "seed",
        "step",
        "live",
        *[f"{method_name(m)} N={dn} V={dv}" for m in METHODS],
        "annealed",
    ]
    rows = []
    for s, lv, mg, an in zip(res, live, t["merged"], annealed, strict=True):
        for p in POINTS:
            rows.append(
                [str(s["seed"]), str(p), f"{lv[p]:.4f}"]
                + [f"{mg[(p, m, dn, dv)]:.4f}" if (p, m, dn, dv) in mg else "n/a" for m in METHODS]
                + [f"{an[p]:.4f}" if p in an else "–"]
            )
    L.append(_md(hdr, rows))
    # Table 6: logs
    L.append("\n## 6. Training logs (summary)\n")
    hdr = [
        "seed",
        "run",
        "steps",
        "tokens",
        "step time (s)",
        "train loss, last 200 steps",
        "grad norm (mean)",
        "steps clipped (grad norm > 1)",
        "wall (s)",
    ]
    rows = []
    for s in res:
        runs = [("constant LR", s["log"], s["wall_s"].get("const"))]
        runs += [
            (f"anneal {a['start']}→{a['end']}", a["log"], s["wall_s"].get(f"anneal-{a['end']}"))
            for a in s["anneals"]
        ]
        for name, lg, wall in runs:
            rows.append(
                [
                    str(s["seed"]),
                    name,
                    str(lg["steps"]),
                    f"{lg['tokens']:,}",
                    f"{lg['mean_step_time_s']:.3f}",
                    f"{lg['train_loss_last200_mean']:.4f} ± {lg['train_loss_last200_std']:.4f}",
                    f"{lg['grad_norm_last200_mean']:.3f}",
                    f"{lg['clipped_share']:.0%}",
                    f"{wall:.0f}" if wall else "(reused)",
                ]
            )
        rows.append(
            [str(s["seed"]), "evaluation", "", "", "", "", "", "", f"{s['wall_s']['eval']:.0f}"]
        )
    L.append(_md(hdr, rows))
    L.append("\nFigures: " + ", ".join(f"[{k}]({v})" for k, v in figs.items()) + "\n")
    text = "\n".join(L)
    (out / "results.md").write_text(text)
    return text


def _md(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_loss(res: list[dict], t: dict, path: Path, tag: str) -> None:
    """Validation loss vs tokens (mean over seeds, ± std band), anneals, merged points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, dn, dv = DEFAULT
    steps = [r["step"] for r in res[0]["live"]]
    tokens = [r["tokens"] for r in res[0]["live"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    for ax, lo in zip(axes, (300, 1050), strict=True):
        idx = [i for i, s in enumerate(steps) if s >= lo]
        ms = [_mean_std([lv[steps[i]] for lv in t["live"]]) for i in idx]
        x = [tokens[i] for i in idx]
        ax.plot(x, [m for m, _ in ms], color="0.35", lw=1.2, label="live checkpoint (constant LR)")
        ax.fill_between(
            x, [m - s for m, s in ms], [m + s for m, s in ms], color="0.35", alpha=0.15, lw=0
        )
        for k, (_, end) in enumerate(ANNEALS):
            if end < lo:
                continue
            curves = [next(a for a in s["anneals"] if a["end"] == end)["curve"] for s in res]
            cx = [r["tokens"] for r in curves[0]]
            cm = [_mean_std([c[i]["val_loss"] for c in curves])[0] for i in range(len(cx))]
            ax.plot(
                cx,
                cm,
                color="crimson",
                lw=1.2,
                label="WSD anneal (branch)" if k == len(ANNEALS) - 1 else None,
            )
            m, s = _mean_std([a[end] for a in t["annealed"]])
            ax.errorbar([cx[-1]], [m], yerr=[s], fmt="*", ms=12, color="crimson", capsize=3)
        markers = {"sma": "s", "ema:0.1": "v", "ema:0.2": "^", "wma": "D"}
        for j, meth in enumerate(METHODS):
            xs, ys, es = [], [], []
            for p in POINTS:
                if p < lo or (p, meth, dn, dv) not in t["gain"]:
                    continue
                m, s = _mean_std([mg[(p, meth, dn, dv)] for mg in t["merged"]])
                xs.append(p * tokens[0] / steps[0] + (j - 1.5) * 4000)
                ys.append(m)
                es.append(s)
            ax.errorbar(
                xs,
                ys,
                yerr=es,
                fmt=markers[meth],
                ms=6,
                capsize=3,
                label=f"{method_name(meth)} N={dn} V={dv}",
            )
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"PMA on the tiny run ({tag}): mean ± std over {len(res)} seeds")
    axes[1].set_title("zoom: last 450 steps")
    axes[0].legend(fontsize=7)
    ys = [_mean_std([lv[s] for lv in t["live"]])[0] for s in steps if s >= steps[len(steps) // 4]]
    axes[0].set_ylim(min(ys) - 0.06, min(ys) + 0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_per_seed(res: list[dict], t: dict, path: Path, tag: str) -> None:
    """One panel per seed: its live curve, anneal branches and the default merges (no averaging
    across seeds, which would blur a seed-specific sudden drop of the loss into a slope)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dm, dn, dv = DEFAULT
    cols = min(len(res), 5)
    fig, axes = plt.subplots(
        1, cols, figsize=(3.3 * cols, 3.2), dpi=120, sharey=True, squeeze=False
    )
    for ax, s, mg in zip(axes[0], res, t["merged"], strict=False):
        live = [r for r in s["live"] if r["step"] >= 300]
        ax.plot([r["step"] for r in live], [r["val_loss"] for r in live], color="0.35", lw=1)
        for a in s["anneals"]:
            c = a["curve"]
            ax.plot(
                [a["start"]] + [r["step"] for r in c],
                [None] + [r["val_loss"] for r in c],
                color="crimson",
                lw=1,
            )
            ax.plot([c[-1]["step"]], [c[-1]["val_loss"]], "*", color="crimson", ms=9)
        pts = [p for p in POINTS if (p, dm, dn, dv) in mg]
        ax.plot(pts, [mg[(p, dm, dn, dv)] for p in pts], "s", color="tab:blue", ms=5)
        ax.set_title(f"seed {s['seed']}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss")
    fig.suptitle(
        f"Every seed ({tag}): live (grey), WSD anneal branches (red, ★ = annealed), "
        f"{method_name(dm)} N={dn} V={dv} merges (blue squares)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_heatmap(res: list[dict], t: dict, path: Path, tag: str) -> None:
    """Gain over the live checkpoint (mean over seeds) per point x method, N x V cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    vals = [_mean_std(g)[0] * 1000 for g in t["gain"].values()]
    # The scale follows the gains; a few merges that reach back to the end of warmup are far
    # worse (the paper: merging unstable early weights hurts) and saturate the red end instead.
    lim = max(max(vals), 1e-9)
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    fig, axes = plt.subplots(
        len(POINTS),
        len(METHODS),
        figsize=(3.2 * len(METHODS), 2.4 * len(POINTS)),
        dpi=120,
        squeeze=False,
    )
    im = None
    for r, p in enumerate(POINTS):
        for c, m in enumerate(METHODS):
            ax = axes[r][c]
            grid = [
                [
                    _mean_std(t["gain"][(p, m, n, v)])[0] * 1000
                    if (p, m, n, v) in t["gain"]
                    else math.nan
                    for v in VS
                ]
                for n in NS
            ]
            im = ax.imshow(
                [[min(max(x, -lim), lim) for x in row] for row in grid],
                cmap="RdBu",
                norm=norm,
                aspect="auto",
            )
            for i, n in enumerate(NS):
                for j, v in enumerate(VS):
                    key = (p, m, n, v)
                    if key in t["gain"]:
                        g = t["gain"][key]
                        ax.text(
                            j,
                            i,
                            f"{_mean_std(g)[0] * 1000:.1f}\n{sum(x > 0 for x in g)}/{len(g)}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if abs(grid[i][j]) > 0.6 * lim else "black",
                        )
                    else:
                        ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.5")
            ax.set_xticks(range(len(VS)), [str(v) for v in VS])
            ax.set_yticks(range(len(NS)), [str(n) for n in NS])
            if r == len(POINTS) - 1:
                ax.set_xlabel("V (steps)")
            if c == 0:
                ax.set_ylabel(f"step {p}\nN")
            if r == 0:
                ax.set_title(method_name(m))
    fig.suptitle(
        f"Validation-loss gain over the live checkpoint (×1e-3 nats, mean over {len(res)} seeds; k/{len(res)} seeds better) — {tag}",
        fontsize=10,
    )
    fig.colorbar(im, ax=axes, shrink=0.6, label="gain ×1e-3 (blue = merge better; red clipped)")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_gain_vs_v(res: list[dict], t: dict, path: Path, tag: str, point: int) -> None:
    """The paper's Fig. 5 analogue: gain vs V per N, one panel per method, with seed std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(METHODS), figsize=(3.2 * len(METHODS), 3.2), dpi=120, sharey=True
    )
    for ax, m in zip(axes, METHODS, strict=True):
        for n in NS:
            vs = [v for v in VS if (point, m, n, v) in t["gain"]]
            ms = [_mean_std(t["gain"][(point, m, n, v)]) for v in vs]
            ax.errorbar(
                vs,
                [x * 1000 for x, _ in ms],
                yerr=[s * 1000 for _, s in ms],
                marker="o",
                capsize=3,
                label=f"N={n}",
            )
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(VS, [str(v) for v in VS])
        ax.set_title(method_name(m))
        ax.set_xlabel("V (steps)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gain over live (×1e-3 nats)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Gain vs interval V at step {point} (mean ± std over {len(res)} seeds) — {tag}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(results: Path, tag: str) -> None:
    res = load_results(results)
    t = tables(res)
    figs = {
        "loss vs tokens": "loss_vs_tokens.png",
        "gain heatmap": "gain_heatmap.png",
        f"gain vs V at step {POINTS[-1]}": "gain_vs_v.png",
        "every seed": "loss_per_seed.png",
    }
    plot_loss(res, t, results / figs["loss vs tokens"], tag)
    plot_heatmap(res, t, results / figs["gain heatmap"], tag)
    plot_per_seed(res, t, results / figs["every seed"], tag)
    plot_gain_vs_v(res, t, results / figs[f"gain vs V at step {POINTS[-1]}"], tag, POINTS[-1])
    print(write_markdown(res, t, results, tag, figs))
    summary = {
        "seeds": [s["seed"] for s in res],
        "gain": {f"{p}/{m}/N{n}/V{v}": _mean_std(g) for (p, m, n, v), g in t["gain"].items()},
        "live": {p: _mean_std([lv[p] for lv in t["live"]]) for p in POINTS},
        "annealed": {e: _mean_std([a[e] for a in t["annealed"]]) for _, e in ANNEALS},
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=1))


# --- driver ---------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--stage", choices=["all", "seed", "report"], default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2, help="seeds in parallel (one torch thread each)")
    ap.add_argument("--tag", default="lr1e-2", help="names runs/pma_grid/<tag> and results/<tag>")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="config override for every run"
    )
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "pma_grid")
    args = ap.parse_args()
    runs = args.runs / args.tag
    results = HERE / "results" / args.tag
    if args.stage == "seed":
        for s in args.seeds:
            seed_job(runs, results, s, args.sets)
        return 0
    if args.stage == "all":
        t0 = time.perf_counter()

        def one(seed: int) -> None:
            # A child process per seed: its own torch thread pool, and a crash stays contained.
            cmd = [
                sys.executable,
                __file__,
                "--stage",
                "seed",
                "--seeds",
                str(seed),
                "--tag",
                args.tag,
                "--runs",
                str(args.runs),
            ]
            for s in args.sets:
                cmd += ["--set", s]
            (runs / f"seed{seed}").mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            with open(runs / f"seed{seed}" / "driver.log", "a") as log:
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            print(
                f"seed {seed}: {'done' if rc == 0 else f'FAILED ({rc})'} at {time.perf_counter() - t0:.0f}s",
                flush=True,
            )

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, args.seeds))
        print(f"train + eval: {time.perf_counter() - t0:.0f}s", flush=True)
    report(results, args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
