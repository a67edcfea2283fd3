"""PMA-init results (experiments/pma_init/summary.json): loss-spike recovery and CT/SFT from merges."""

from __future__ import annotations

from docgen.common import _table, load

PMA_INIT = "experiments/pma_init/summary.json"
SPIKE_LABELS = {
    "x30": "no intervention (the spiked run continued)",
    "x10": "no intervention, milder spike (10× LR)",
    "pma_newest": "PMA-init (SMA of 10), AdamW state kept",
    "pma_fresh": "PMA-init (SMA of 10), fresh AdamW",
    "last_newest": "rollback: last checkpoint, AdamW state kept",
    "last_fresh": "last checkpoint, fresh AdamW",
    "clean": "reference: the run without a spike",
}
INIT_LABELS = {"sma": "SMA", "wma": "WMA", "ema0.2": "EMA α=0.2"}
VERDICT = {
    "A lower": "lower, outside the seed spread",
    "B lower": "higher, outside the seed spread",
}


def _pm(d: dict) -> str:
    return f"{d['mean']:.4f} ± {d['std']:.4f}"


def _diff(c: dict) -> str:
    lo, hi = c["ci95"]
    verdict = VERDICT.get(c["verdict"], "within noise")
    return f"{c['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] ({c['a_lower_on']}/{c['n']} lower): {verdict}"


def _cmp(comparisons: list[dict], a: str, b: str, metric: str) -> dict:
    (c,) = [x for x in comparisons if (x["a"], x["b"], x["metric"]) == (a, b, metric)]
    return c


def spike_table(scenario: str = "at421") -> str:
    """Validation loss per recovery arm, mean ± std over seeds, and the merge's paired difference."""
    s = load(PMA_INIT)
    r = s["recovery"][scenario]
    b, n = r["branch"], len(s["seeds"])
    rows = [
        [SPIKE_LABELS[a], _pm(m["val_first"]), _pm(m["val_mean_stable"]), _pm(m["val_600"])]
        for a, m in r["arms"].items()
    ]
    comp = r["comparisons"]
    kept = [
        _diff(_cmp(comp, "pma_newest", "last_newest", m))
        for m in ("val_first", "val_mean_stable", "val_600")
    ]
    return (
        _table(["run", f"val @ {b + 10}", f"mean val {b + 10}–480", "val @ 600"], rows)
        + f"\n\nSpike: 30× LR at updates {r['spike_updates'][0]}–{r['spike_updates'][1]}, detected "
        f"at step {r['detected_spike_step']}; merge of checkpoints {r['merged_steps'][0]}–"
        f"{r['merged_steps'][-1]}; mean ± std over {n} seeds. PMA-init minus rollback (same AdamW "
        f"state), paired, 95% interval: {kept[0]} at step {b + 10}; {kept[1]} over {b + 10}–480; "
        f"{kept[2]} at step 600."
    )


def ct_sft_table() -> str:
    """Each merge minus the latest checkpoint, paired, for CT and SFT started from them."""
    s = load(PMA_INIT)
    p = s["pma_init"]
    rows = []
    for k, label in INIT_LABELS.items():
        row = [label, _diff(p["init_val_vs_latest"][k])]
        for task in ("ct", "sft"):
            comp = p[task]["comparisons"]
            row += [_diff(_cmp(comp, k, "latest", m)) for m in ("val_early", "val_final")]
        rows.append(row)
    return _table(
        [
            "merge − latest",
            "before training",
            "CT: mean val 10–50",
            f"CT: val @ {p['ct']['steps']}",
            "SFT: mean val 10–50",
            f"SFT: val @ {p['sft']['steps']}",
        ],
        rows,
    ) + (
        f"\n\nValidation-loss differences, paired by seed, mean [95% interval] over "
        f"{len(s['seeds'])} seeds; negative = the run started from the merge is lower."
    )


def sentence() -> str:
    s = load(PMA_INIT)
    r = s["recovery"]["at421"]
    comp = r["comparisons"]
    vs_none = _cmp(comp, "pma_fresh", "x30", "val_600")
    vs_roll = _cmp(comp, "pma_newest", "last_newest", "val_600")
    p = s["pma_init"]
    ct = _cmp(p["ct"]["comparisons"], "sma", "latest", "val_final")
    sft = _cmp(p["sft"]["comparisons"], "sma", "latest", "val_final")
    return (
        f"final validation loss after a spike injected on purpose (30× LR for 3 updates; "
        f"{len(s['seeds'])} seeds, paired), resuming from the SMA of the 10 checkpoints before it "
        f"vs leaving the spiked run alone: {_brief(vs_none)}; vs rolling back to the last "
        f"checkpoint: {_brief(vs_roll)}. Continued training / SFT started from that SMA vs the "
        f"latest checkpoint: {_brief(ct)} / {_brief(sft)}"
    )


def _brief(c: dict) -> str:
    """'0.113 nats lower, outside the seed spread' or '+0.003 nats, within noise'."""
    if c["verdict"] == "within noise":
        return f"{c['mean']:+.3f} nats, within noise"
    word = "lower" if c["verdict"] == "A lower" else "higher"
    return f"{abs(c['mean']):.3f} nats {word}, outside the seed spread"
