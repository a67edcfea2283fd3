"""Result tables and sentences, every number read from a committed result file.

Sources: `experiments/pma_grid/results/<tag>/summary.json`, `experiments/pma_tiny/pma.json`,
`experiments/pma_init/summary.json` (docgen/pma_init.py), `experiments/rl_kk/summary_<task>.json`,
`experiments/<name>/summary*.json` of newer experiments, and `benchmarks/results/*.json`.
A missing file is an error naming it: a page that cites a result needs the result committed.
"""

from __future__ import annotations

import statistics

from docgen import common, pma_init
from docgen.bench import (  # noqa: F401  (re-exported for the generator)
    MERGE_BENCH,
    _section,
    gpu_check_files,
    gpu_sentence,
    hostile_round,
    merge_benchmark,
    merge_benchmark_sentence,
    merge_dcp_table,
    online_write_table,
    reward_worst_case,
    threads_benchmark,
)
from docgen.common import _pm, _table, load

GRID_METHODS = (("sma", "SMA"), ("ema:0.1", "EMA α=0.1"), ("ema:0.2", "EMA α=0.2"), ("wma", "WMA"))
GRID_N, GRID_V = 10, 20  # the grid's declared headline merge (experiments/pma_grid/README.md)
RL_VARIANTS = ("GRPO", "+AR", "+Lopti", "+AR+Lopti")
RL_LABELS = {"GRPO": "GRPO", "+AR": "+ AR", "+Lopti": "+ Lopti", "+AR+Lopti": "+ AR + Lopti"}
BUCKETS = ("p<0.25", "0.25<=p<0.5", "0.5<=p<0.75", "p>=0.75")
BUCKET_TEXT = ("π_old < 0.25", "0.25–0.5", "0.5–0.75", "≥ 0.75")


# --- PMA grid ----------------------------------------------------------------------------------


def grid(tag: str) -> dict:
    return load(f"experiments/pma_grid/results/{tag}/summary.json")


def grid_gain(s: dict, step: str, method: str, n: int = GRID_N, v: int = GRID_V) -> list[float]:
    return s["gain"][f"{step}/{method}/N{n}/V{v}"]


def pma_grid_table(tag: str) -> str:
    s = grid(tag)
    headers = ["step", "live", *[f"{label} gain" for _, label in GRID_METHODS], "anneal gain"]
    rows = []
    for step, live in s["live"].items():
        ann = s["annealed"].get(step)
        ann_gain = f"{live[0] - ann[0]:.4f}" if ann else "–"
        rows.append(
            [step, _pm(live)] + [_pm(grid_gain(s, step, m)) for m, _ in GRID_METHODS] + [ann_gain]
        )
    positive = sum(1 for pair in s["gain"].values() if pair[0] > 0)
    return (
        _table(headers, rows)
        + f"\n\nValidation loss of the live checkpoint and each merge's gain over it (positive = the"
        f" merge is better), N = {GRID_N} checkpoints V = {GRID_V} steps apart; mean ± std over"
        f" {len(s['seeds'])} seeds. The anneal gain is the live loss minus the WSD anneal's at the"
        f" same tokens. Over all {len(s['gain'])} point × method × N × V cells, {positive} have a"
        f" positive mean gain."
    )


def pma_grid_sentence(tag: str = "lr1e-2") -> str:
    s = grid(tag)
    gains = [grid_gain(s, step, "sma")[0] for step in s["live"]]
    shares = [
        grid_gain(s, step, "sma")[0] / (s["live"][step][0] - s["annealed"][step][0])
        for step in s["annealed"]
    ]
    better01 = sum(
        1
        for key, pair in s["gain"].items()
        if "/ema:0.2/" in key and pair[0] > s["gain"][key.replace("ema:0.2", "ema:0.1")][0]
    )
    cells01 = sum(1 for key in s["gain"] if "/ema:0.2/" in key)
    return (
        f"SMA of N = {GRID_N} checkpoints V = {GRID_V} steps apart beats the live checkpoint by "
        f"{min(gains):.3f}–{max(gains):.3f} nats ({len(s['seeds'])} seeds) and recovers "
        f"{min(shares):.0%}–{max(shares):.0%} of what a same-token WSD anneal gains, without "
        f"training; EMA α = 0.2 beats α = 0.1 in {better01} of {cells01} cells"
    )


# --- pretrain report ---------------------------------------------------------------------------


def pma_tiny_table() -> str:
    from pmalopti.pma.report import pma_table

    return pma_table(load("experiments/pma_tiny/pma.json")).strip()


# --- RL ----------------------------------------------------------------------------------------


def rl(task: str) -> dict:
    return load(f"experiments/rl_kk/summary_{task}.json")


def _final(s: dict, variant: str, key: str = "all") -> list[float]:
    return [run["final"][key] for run in s["runs"][variant].values()]


def _mean_std(xs: list[float]) -> list[float]:
    return [statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0]


def rl_table(tasks: list[str]) -> str:
    headers = ["variant"]
    cols = []
    for task in tasks:
        s = rl(task)
        first = next(iter(s["runs"]["GRPO"].values()))
        lr_note = f"{task}, {s['steps']} steps, {first['n_eval']} held out"
        headers.append(lr_note)
        cols.append(s)
    rows = [
        ["before RL (step 0)"]
        + [
            f"{statistics.fmean(r['start']['all'] for r in s['runs']['GRPO'].values()):.3f}"
            for s in cols
        ]
    ]
    for v in RL_VARIANTS:
        rows.append(
            [RL_LABELS[v]] + ["{:.3f} ± {:.3f}".format(*_mean_std(_final(s, v))) for s in cols]
        )
    seeds = sorted({len(s["seeds"]) for s in cols})
    return (
        _table(headers, rows)
        + f"\n\nGreedy accuracy on held-out problems after the last step, mean ± std over "
        f"{'/'.join(map(str, seeds))} seeds (`kk`: Knights and Knaves; `arith`: reversed 1–2 digit"
        f" sums; `arith-lr1e-4`: the same at a 5× lower LR)."
    )


def fig1_shares(task: str, variant: str = "GRPO") -> tuple[list[float], list[float]]:
    runs = [r for r in rl(task)["runs"][variant].values() if r.get("token_share")]
    tok = [statistics.fmean(r["token_share"][b] for r in runs) for b in BUCKETS]
    grad = [statistics.fmean(r["grad_share"][b] for r in runs) for b in BUCKETS]
    return tok, grad


def rl_fig1_table(tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        tok, grad = fig1_shares(task)
        rows.append([f"{task}: share of tokens", *[f"{x:.3f}" for x in tok]])
        rows.append([f"{task}: share of gradient norm", *[f"{x:.3f}" for x in grad]])
    return _table(["", *BUCKET_TEXT], rows)


def rl_sentences() -> tuple[str, str]:
    toks, grads = [], []
    for task in ("kk", "arith", "arith-lr1e-4"):
        for v in RL_VARIANTS:
            tok, grad = fig1_shares(task, v)
            toks.append(tok[0])
            grads.append(grad[0])
    fig1 = (
        f"tokens with π_old < 0.25 are {min(toks):.0%}–{max(toks):.0%} of the response tokens but "
        f"carry {min(grads):.0%}–{max(grads):.0%} of the policy-gradient norm (every variant, K&K "
        f"and arithmetic)"
    )
    kk, ar = rl("kk"), rl("arith")
    kk_best = max(statistics.fmean(_final(kk, v)) for v in RL_VARIANTS)
    start = statistics.fmean(r["start"]["all"] for r in ar["runs"]["GRPO"].values())
    parts = ", ".join(
        "{} {:.3f} ± {:.3f}".format(RL_LABELS[v], *_mean_std(_final(ar, v))) for v in RL_VARIANTS
    )
    acc = (
        f"K&K after RL: best variant {kk_best:.3f} accuracy; reversed arithmetic from "
        f"{start:.3f} before RL, after {ar['steps']} steps: {parts}"
    )
    return fig1, acc


# --- RL where plain GRPO works (experiments/rl_effect) -----------------------------------------

RL_EFFECT = "experiments/rl_effect/summary.json"
RL_EFFECT_ROWS = (
    ("grpo", "GRPO"),
    ("ar", "+ AR"),
    ("lopti", "+ Lopti"),
    ("ar_lopti", "+ AR + Lopti"),
)


def rl_effect_table() -> str:
    s = load(RL_EFFECT)
    rows = []
    for key, name in RL_EFFECT_ROWS:
        if key not in s["variants"]:
            continue
        seeds = s["variants"][key]["seeds"]
        start = _mean_std([x["start_accuracy"] for x in seeds])
        final = _mean_std([x["final_accuracy"] for x in seeds])
        gain = _mean_std([x["final_accuracy"] - x["start_accuracy"] for x in seeds])
        vs = s["variants"][key].get("vs_grpo")
        paired = (
            f"{vs['mean']:+.3f} ± {vs['std']:.3f} ({vs['wins']}/{vs['n']} better)" if vs else "–"
        )
        row = [name, _pm(start, 3), _pm(final, 3), _pm(gain, 3), paired, str(len(seeds))]
        rows.append(row)
    headers = [
        "variant",
        "start",
        f"after {s['steps']} steps",
        "gain",
        "minus GRPO, same seed",
        "seeds",
    ]
    return (
        _table(headers, rows)
        + "\n\nHeld-out greedy accuracy on 400 reversed 2–3 digit sums per seed, mean ± std over "
        "seeds (`experiments/rl_effect/summary.json`)."
    )


# --- benchmarks --------------------------------------------------------------------------------


RL_EFFECT_LABELS = {"ar": "+ AR", "lopti": "+ Lopti", "ar_lopti": "+ AR + Lopti"}


def rl_effect_sentence() -> str:
    """Plain GRPO where it learns, and AR / Lopti paired with it seed by seed."""
    s = load(RL_EFFECT)
    v = s["variants"]
    base = v["grpo"]
    parts = []
    for key, label in RL_EFFECT_LABELS.items():
        if key not in v:
            continue
        d = v[key]["vs_grpo"]
        parts.append(
            f"{label} {d['mean']:+.3f} ± {d['std']:.3f} (better on {d['wins']}, worse on "
            f"{d['losses']} of {d['n']} seeds)"
        )
    return (
        f"in the regime where plain GRPO learns (a start model SFT'd on imperfect demonstrations: "
        f"half its answers drop every carry; {s['steps']} steps, {base['n']} "
        f"seed{'s' if base['n'] != 1 else ''}), it raises held-out accuracy from "
        f"{base['start_mean']:.3f} to {base['final_mean']:.3f} ± {base['final_std']:.3f}; final "
        f"accuracy minus GRPO's: " + ", ".join(parts)
    )


# --- README summary ----------------------------------------------------------------------------


def readme_results() -> str:
    fig1, acc = rl_sentences()
    lines = [
        "**PMA, tiny pre-training runs** ([experiments](docs/experiments.md))",
        f"- [PMA grid](experiments/pma_grid/README.md): {pma_grid_sentence()}.",
        f"- [PMA-init](experiments/pma_init/README.md): {pma_init.sentence()}.",
        "",
        "**AR and Lopti for GRPO, tiny models** ([every seed](experiments/rl_kk/README.md))",
        f"- The paper's Fig. 1 reproduces: {fig1}.",
        f"- The paper's accuracy gains do not reproduce at this scale. {acc}.",
        *(
            [f"- [GRPO where it learns](experiments/rl_effect/README.md): {rl_effect_sentence()}."]
            if (common.ROOT / RL_EFFECT).is_file()
            else []
        ),
        "",
        "**Benchmarks** ([benchmarks](docs/benchmarks.md))",
        f"- {merge_benchmark_sentence()}.",
        gpu_sentence(),
    ]
    return "\n".join(lines)


# --- hostile inputs ----------------------------------------------------------------------------
