"""Markdown of experiments/pma_init: results.md, and the results section of README.md."""

from __future__ import annotations

import re

from summarize import ARMS, EARLY, END, END_STABLE, HERE, INITS, TASKS


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
