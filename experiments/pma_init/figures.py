"""Figures of experiments/pma_init: spike_recovery.png and ct_sft.png (mean ± std over seeds)."""

from __future__ import annotations

import statistics

from summarize import ARMS, COLORS, HERE, INITS, TASKS, val_at


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
