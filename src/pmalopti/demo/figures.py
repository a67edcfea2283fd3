"""The demo's PNG figures, drawn from the stage summaries (plain dicts) with matplotlib (Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pmalopti.pma.report import method_label
from pmalopti.rl.diagnostics import BUCKET_LABELS
from pmalopti.runtime.fs import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(ys: Sequence[float], k: int) -> list[float]:
    """Trailing mean over `k` points (training losses are noisy at batch size 32)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_pretrain(metrics: list[dict], stage: dict, path: Path) -> Path:
    """Training loss, live validation loss, online merges (markers) and the anneal, per step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    steps = [r["step"] for r in metrics]
    ax.plot(
        steps,
        _smooth([r["loss"] for r in metrics], 20),
        lw=0.8,
        color="0.7",
        label="training loss (smoothed)",
    )
    val = [(r["step"], r["val_loss"]) for r in metrics if "val_loss" in r]
    ax.plot(*zip(*val, strict=True), "-o", ms=2.5, color="0.25", label="live model (validation)")
    markers = "s^vDPX"
    for i, m in enumerate(stage["pma"]["methods"]):
        pts = [(r["step"], r["val_loss"]) for r in stage["online"] if r["method"] == m]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                markers[i % 6],
                ms=5,
                ls="none",
                alpha=0.8,
                label=f"online {method_label(m)} (N={stage['pma']['n']})",
            )
    a = stage["pma"].get("annealed")
    if a:
        ax.plot([a["step"]], [a["val_loss"]], "*", ms=13, color="crimson", label="annealed")
    first, last = stage["stable_steps"]
    ax.axvspan(0, first, color="0.93")
    if a:
        ax.axvspan(last, a["step"], color="0.9", label="decay phase")
    ys = [v for _, v in val] + [r["val_loss"] for r in stage["online"]]
    tail = sorted(ys)[: max(3, int(0.85 * len(ys)))]
    lo, hi = min(tail), max(tail)
    ax.set_ylim(lo - 0.1 * (hi - lo or 1), hi + 0.6 * (hi - lo or 1))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Stage 1: pre-training (WSD) with online PMA")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def plot_sft(runs: dict, path: Path) -> Path:
    """Validation loss per SFT step for each starting point (step 0 = before fine-tuning)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, r in runs.items():
        pts = [[0, r["start"]["val_loss"]], *r["val_curve"]]
        ax.plot(*zip(*pts, strict=True), "-o", ms=3, label=f"SFT from {name}")
    ax.set_xlabel("SFT step")
    ax.set_ylabel("validation loss (answer tokens)")
    ax.set_title("Stage 2: PMA-init vs the latest checkpoint")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_grpo(runs: dict, path: Path) -> Path:
    """Training reward (smoothed) and held-out greedy accuracy per GRPO step, both runs."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for name, r in runs.items():
        steps = [c["step"] for c in r["curve"]]
        ax1.plot(steps, _smooth([c["reward/mean"] for c in r["curve"]], 5), label=name)
        acc = [(0, r["before"]["eval/accuracy"])]
        acc += [(c["step"], c["eval/accuracy"]) for c in r["curve"] if "eval/accuracy" in c]
        ax2.plot(*zip(*acc, strict=True), "-o", ms=3, label=name)
    ax1.set_title("training reward (mean over rollouts, smoothed)")
    ax2.set_title("held-out accuracy (greedy)")
    for ax in (ax1, ax2):
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Stage 3: GRPO vs GRPO + AR + Lopti (same start, same seed)")
    return save_figure(fig, path)


def plot_buckets(runs: dict, path: Path) -> Path:
    """Token share and gradient-norm share per π_old bucket (the Lopti paper's Fig. 1)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), dpi=120, squeeze=False)
    x = range(len(BUCKET_LABELS))
    for ax, (name, r) in zip(axes[0], runs.items(), strict=True):
        b = r["buckets"]
        tok = [b.get(f"diag/token_share/{k}", 0.0) for k in BUCKET_LABELS]
        grad = [b.get(f"diag/grad_share/{k}", 0.0) for k in BUCKET_LABELS]
        ax.bar([i - 0.2 for i in x], tok, 0.4, label="token share")
        ax.bar([i + 0.2 for i in x], grad, 0.4, label="gradient-norm share")
        ax.set_xticks(
            list(x), [k.replace("<=", "≤").replace(">=", "≥") for k in BUCKET_LABELS], fontsize=8
        )
        ax.set_xlabel("π_old bucket")
        ax.set_title(f"{name} (mean of {b.get('steps', 0)} steps)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return save_figure(fig, path)
