"""The curves of experiments/rl_effect, from summarize.py's summary: held-out accuracy and reward
curves and the paper's Fig. 1 (share of tokens and of gradient norm per π_old bucket) as figures,
and the held-out accuracy at every evaluation step as a table."""

from __future__ import annotations

from pathlib import Path

BUCKETS = ("p<0.25", "0.25<=p<0.5", "0.5<=p<0.75", "p>=0.75")
BUCKET_NAMES = ("π_old < 0.25", "0.25–0.5", "0.5–0.75", "≥ 0.75")
NAMES = {
    "grpo": "GRPO",
    "ar": "+AR (α 0.3)",
    "lopti": "+Lopti (η 0.5)",
    "ar_lopti": "+AR+Lopti",
    "grpo_2sweeps": "GRPO, 2 sweeps (control)",
}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def figures(main: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def save_figure(fig, path: Path) -> Path:
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        tmp.replace(path)
        return path

    vs = main["variants"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for v, s in vs.items():
        ev = np.array([[a for _, a in x["eval_curve"]] for x in s["seeds"]])
        steps = [st for st, _ in s["seeds"][0]["eval_curve"]]
        ax1.errorbar(steps, ev.mean(0), yerr=ev.std(0), label=NAMES[v], capsize=3, marker="o")
        rw = np.array([[r for _, r in x["reward_curve"]] for x in s["seeds"]])
        k = 5  # moving average over 5 steps
        sm = np.convolve(rw.mean(0), np.ones(k) / k, mode="valid")
        ax2.plot(np.arange(k, k + len(sm)), sm, label=NAMES[v])
    ax1.set(
        xlabel="GRPO step",
        ylabel="held-out greedy accuracy",
        title="held-out accuracy (mean ± std)",
    )
    ax2.set(
        xlabel="GRPO step", ylabel="train reward (= accuracy at T = 1)", title="reward, 5-step mean"
    )
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    paths = [str(save_figure(fig, out / "curves.png"))]
    with_b = [x["buckets"] for x in vs["grpo"]["seeds"] if "buckets" in x]
    if with_b:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = np.arange(len(BUCKETS))
        tok = [_mean([b[k]["token_share"] for b in with_b]) for k in BUCKETS]
        grad = [_mean([b[k]["grad_share"] for b in with_b]) for k in BUCKETS]
        ax.bar(x - 0.2, tok, 0.4, label="share of tokens")
        ax.bar(x + 0.2, grad, 0.4, label="share of gradient norm")
        ax.set_xticks(x, BUCKET_NAMES)
        ax.set(title="plain GRPO: where the gradient comes from", ylabel="share")
        ax.legend()
        paths.append(str(save_figure(fig, out / "token_prob_buckets.png")))
    plt.close("all")
    return paths


def curve_table(vs: dict) -> str:
    """Held-out accuracy at every evaluation step: GRPO's mean ± std, and each other variant's
    paired difference with GRPO (same seed), mean ± std -- speed of learning, not only its end."""
    base = {x["seed"]: dict(x["eval_curve"]) for x in vs["grpo"]["seeds"]}
    steps = [st for st, _ in vs["grpo"]["seeds"][0]["eval_curve"]]
    lines = [
        "**Held-out accuracy along training** (GRPO: mean ± std over seeds; the others: minus "
        "GRPO's of the same seed, mean ± std)",
        "",
        "| variant | " + " | ".join(f"step {st}" for st in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for v, s in vs.items():
        cells = []
        for st in steps:
            if v == "grpo":
                xs = [c[st] for c in base.values()]
            else:
                xs = [dict(x["eval_curve"])[st] - base[x["seed"]][st] for x in s["seeds"]
                      if x["seed"] in base]  # fmt: skip
            m = _mean(xs)
            sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
            cells.append(f"{m:.3f} ± {sd:.3f}" if v == "grpo" else f"{m:+.3f} ± {sd:.3f}")
        lines.append(f"| {NAMES[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
