"""Tables and figures for experiment results (markdown + matplotlib PNG).

Pure presentation: functions take plain dicts/lists (as saved in a run's report JSON) and write
text or images, so the demo and the experiments reuse them without any training code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pmalopti.pma.spec import MergeSpec
from pmalopti.runtime.fs import atomic_write_json, atomic_write_text, save_figure


def method_label(method: str) -> str:
    """ "ema:0.2" -> "EMA α=0.2"; "sma" -> "SMA"."""
    return MergeSpec.parse(method).label


def _fmt(v: Any, floatfmt: str) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, floatfmt)
    return str(v)


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".4f"
) -> str:
    """A GitHub markdown table; floats formatted with `floatfmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v, floatfmt) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pma_table(result: Mapping[str, Any]) -> str:
    """Validation loss of the live model vs each merge at each stable-phase point, vs the anneal.

    The last columns give the best merge's gain over the live checkpoint (positive = better) and,
    when the run has a decay phase, how much of the anneal's gain the best merge recovers.
    """
    methods = list(result["methods"])
    annealed = result.get("annealed")
    headers = ["step", "tokens", "live", *[method_label(m) for m in methods], "best − live"]
    if annealed:
        headers.append("share of anneal gain")
    rows = []
    for p in result["points"]:
        best = min(p[m] for m in methods)
        row: list[Any] = [
            p["step"],
            p["tokens"],
            p["live"],
            *[p[m] for m in methods],
            p["live"] - best,
        ]
        if annealed:
            gain = p["live"] - annealed["val_loss"]
            row.append(f"{(p['live'] - best) / gain:.0%}" if gain > 0 else "n/a")
        rows.append(row)
    text = markdown_table(headers, rows)
    if annealed:
        text += (
            f"\nAnnealed model (end of the decay phase, step {annealed['step']}, "
            f"{annealed['tokens']} tokens): validation loss {annealed['val_loss']:.4f}.\n"
        )
    text += (
        f"\nMerges of the last N={result['n']} stable-phase checkpoints, {result['interval_steps']} "
        f"steps apart, ending at the step shown; validation on {result['val_tokens']} held-out tokens.\n"
    )
    return text


def plot_pma(result: Mapping[str, Any], out_png: str | Path, title: str | None = None) -> Path:
    """Validation loss against tokens: the live checkpoints as a line, merges as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    live = result["live"]
    ax.plot(
        [r["tokens"] for r in live],
        [r["val_loss"] for r in live],
        "-o",
        ms=2.5,
        color="0.35",
        label="live checkpoint",
    )
    markers = ["s", "^", "v", "D", "P", "X"]
    for i, m in enumerate(result["methods"]):
        pts = result["points"]
        ax.plot(
            [p["tokens"] for p in pts],
            [p[m] for p in pts],
            markers[i % len(markers)],
            ms=6,
            ls="none",
            label=f"{method_label(m)} (N={result['n']})",
        )
    if result.get("annealed"):
        a = result["annealed"]
        ax.plot(
            [a["tokens"]],
            [a["val_loss"]],
            "*",
            ms=13,
            color="crimson",
            label="annealed (decay end)",
        )
    sched = result.get("schedule") or {}
    if sched.get("decay_steps") and live:
        # Shade the decay phase by the tokens of its first checkpoint.
        decay = [r["tokens"] for r in live if r.get("phase") == "decay"]
        if decay:
            ax.axvspan(decay[0], live[-1]["tokens"], color="0.9", label="decay phase")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss")
    ax.set_title(title or "PMA: merged checkpoints vs live and annealed")
    _zoom(ax, [r["val_loss"] for r in live])
    return _save(fig, ax, out_png)


def _save(fig, ax, out_png: str | Path) -> Path:
    """Grid and legend, then `save_figure`."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


def _zoom(ax, ys: Sequence[float]) -> None:
    """Ignore the first, very high losses so the differences that matter are visible."""
    ys = [y for y in ys if math.isfinite(y)]
    if len(ys) > 4:
        tail = sorted(ys)[: max(3, int(0.8 * len(ys)))]
        lo, hi = min(tail), max(tail)
        pad = 0.15 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + 3 * pad)


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    out_png: str | Path,
    *,
    xlabel: str = "step",
    ylabel: str = "training loss",
    title: str = "",
    vlines: Mapping[str, float] | None = None,
    logy: bool = False,
) -> Path:
    """Several labelled (x, y) curves on one axis, with optional labelled vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, (x, y) in curves.items():
        ax.plot(x, y, lw=1.2, label=label)
    for label, x in (vlines or {}).items():
        ax.axvline(x, ls="--", lw=1, color="0.4")
        ax.annotate(
            label,
            (x, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
        )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return _save(fig, ax, out_png)


def write_pma_report(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """`pma.json`, `pma.md` and `pma.png` in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "pma.json",
        "markdown": out_dir / "pma.md",
        "figure": out_dir / "pma.png",
    }
    atomic_write_json(paths["json"], dict(result))
    atomic_write_text(paths["markdown"], "# PMA report\n\n" + pma_table(result))
    plot_pma(result, paths["figure"])
    return paths
