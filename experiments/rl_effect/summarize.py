"""Tables, figures and summary.json of experiments/rl_effect from the GRPO run logs.

The logs are copied (trimmed to the keys used here) from the run folders into logs/, so the report
can be rebuilt from committed files (`run.py --stage report`). Every number in README.md's results
section is written here from them; docs/experiments.md's `gen:rl_effect` block is rendered from
summary.json by docs/build_readme.py; none is typed by hand.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path

from carry import fork_table, scan_table
from figures import (
    BUCKET_NAMES,
    BUCKETS,
    NAMES,
    _mean,
    curve_table,
    figures,
)  # experiments/rl_effect/

KEEP = ("step", "accuracy", "reward/mean", "response_length/mean", "actor/grad_norm", "time/step")
KEEP_PREFIX = ("eval/", "diag/", "lopti/", "actor/entropy")
RUN = re.compile(r"^(?P<variant>[a-z0-9_]+)-s(?P<seed>\d+)\.jsonl$")


# --- logs ---------------------------------------------------------------------------------------


def copy_logs(runs: Path, out: Path) -> None:
    """runs/grpo/<setting>/<variant>-s<seed>/log.jsonl -> out/logs/<setting>/<variant>-s<seed>.jsonl"""
    from pmalopti.runtime.fs import atomic_write_text

    logs = {p.parent: p for p in sorted((runs / "grpo").glob("*/*/log.jsonl"))}
    # `pmalopti grpo` writes metrics.jsonl since the trainer refactor (log.jsonl before it)
    logs |= {p.parent: p for p in sorted((runs / "grpo").glob("*/*/metrics.jsonl"))}
    for log in logs.values():
        recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        keep = [
            {k: v for k, v in r.items() if k in KEEP or k.startswith(KEEP_PREFIX)} for r in recs
        ]
        dest = out / "logs" / log.parent.parent.name / f"{log.parent.name}.jsonl"
        atomic_write_text(dest, "".join(json.dumps(r) + "\n" for r in keep))


def read_logs(out: Path) -> dict[str, dict[str, dict[int, list[dict]]]]:
    """{setting: {variant: {seed: records}}} from out/logs."""
    res: dict = {}
    for f in sorted((out / "logs").glob("*/*.jsonl")):
        m = RUN.match(f.name)
        if not m:
            continue
        recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        by = res.setdefault(f.parent.name, {}).setdefault(m["variant"], {})
        by[int(m["seed"])] = recs
    return res


# --- per-run numbers ----------------------------------------------------------------------------


def _evals(recs: list[dict]) -> list[dict]:
    return [r for r in recs if "eval/accuracy" in r]


def _by_difficulty(r: dict) -> dict[str, float]:
    p = "eval/accuracy/"
    return {k[len(p) :]: v for k, v in r.items() if k.startswith(p)}


def run_summary(seed: int, recs: list[dict], steps: int, partial: bool = False) -> dict | None:
    """Start/final numbers of one run; None if unfinished (unless `partial`: a search run that
    was stopped early reports its last evaluation)."""
    ev = _evals(recs)
    if not ev or ev[0]["step"] != 0 or len(ev) < 2 or (ev[-1]["step"] != steps and not partial):
        return None
    train = [r for r in recs if "reward/mean" in r]
    diag = [r for r in train if any(k.startswith("diag/grad_share/") for k in r)]
    diag = [r for r in diag if sum(r[f"diag/grad_share/{b}"] for b in BUCKETS) > 0]
    out = {
        "seed": seed,
        "start_accuracy": ev[0]["eval/accuracy"],
        "final_accuracy": ev[-1]["eval/accuracy"],
        "start_by_difficulty": _by_difficulty(ev[0]),
        "final_by_difficulty": _by_difficulty(ev[-1]),
        "final_step": ev[-1]["step"],
        "best_accuracy": max(r["eval/accuracy"] for r in ev),
        "eval_curve": [[r["step"], r["eval/accuracy"]] for r in ev],
        "reward_curve": [[r["step"], r["reward/mean"]] for r in train],
        "train_reward_last10": _mean([r["reward/mean"] for r in train[-10:]]),
        "seconds_per_step": _mean([r["time/step"] for r in train if "time/step" in r]),
    }
    if diag:
        out["buckets"] = {
            b: {
                "token_share": _mean([r[f"diag/token_share/{b}"] for r in diag]),
                "grad_share": _mean([r[f"diag/grad_share/{b}"] for r in diag]),
            }
            for b in BUCKETS
        }
    low = [r["lopti/low_token_share"] for r in train if "lopti/low_token_share" in r]
    if low:
        out["lopti_low_token_share"] = _mean(low)
    return out


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def pm(xs: list[float], d: int = 3) -> str:
    return f"{_mean(xs):.{d}f} ± {_std(xs):.{d}f}" if xs else "–"


def variant_summary(seeds: list[dict], base: dict[int, dict] | None) -> dict:
    start = [s["start_accuracy"] for s in seeds]
    final = [s["final_accuracy"] for s in seeds]
    out = {
        "seeds": seeds,
        "n": len(seeds),
        "start_mean": _mean(start),
        "final_mean": _mean(final),
        "final_std": _std(final),
        "gain_mean": _mean([f - s for f, s in zip(final, start, strict=True)]),
        "gain_std": _std([f - s for f, s in zip(final, start, strict=True)]),
    }
    if base is not None:  # paired with plain GRPO of the same seed (same start, eval set, data)
        diffs = [
            s["final_accuracy"] - base[s["seed"]]["final_accuracy"]
            for s in seeds
            if s["seed"] in base
        ]
        out["vs_grpo"] = {
            "mean": _mean(diffs),
            "std": _std(diffs),
            "wins": sum(d > 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs),
            "n": len(diffs),
        }
    return out


def summarize(logs: dict, settings: dict, variants: list[str], steps_of: Callable) -> dict:
    res = {}
    for setting in settings:  # the order of run.py's SETTINGS: the order the search was run
        by_variant = logs.get(setting)
        if not by_variant:
            continue
        steps = steps_of(setting)
        per = {}
        for v in variants:
            runs = by_variant.get(v, {})
            partial = setting != "main"
            seeds = [run_summary(s, runs[s], steps, partial) for s in sorted(runs)]
            per[v] = [s for s in seeds if s is not None]
        base = {s["seed"]: s for s in per.get("grpo", [])}
        res[setting] = {
            "overrides": settings[setting],
            "steps": steps,
            "variants": {
                v: variant_summary(per[v], None if v == "grpo" else base)
                for v in variants
                if per[v]
            },
        }
    return res


# --- report -------------------------------------------------------------------------------------


def _overrides(over: list[str], abbreviations: dict[str, list[str]]) -> str:
    """The overrides as code spans, a leading run of a named list (run.py's ROUND1) by its name."""
    head = []
    for name, common in abbreviations.items():
        if common and over[: len(common)] == common:
            head, over = [name], over[len(common) :]
    return ", ".join([*head, *(f"`{o}`" for o in over)]) or "(grpo.yaml as is)"


def tables(main: dict, search: dict, abbreviations: dict[str, list[str]] | None = None) -> str:
    vs = main["variants"]
    lines = []
    diffs = sorted({d for v in vs.values() for s in v["seeds"] for d in s["final_by_difficulty"]})
    head = "| variant | start | final | gain | " + " | ".join(f"{d} digits" for d in diffs)
    lines += [
        "**Held-out greedy accuracy** (400 sums per seed; mean ± std over seeds; start = the SFT "
        f"model, final = after {main['steps']} GRPO steps)",
        "",
        head + " | seeds |",
        "|---|---:|---:|---:|" + "---:|" * len(diffs) + "---:|",
    ]
    for v, s in vs.items():
        per_d = [
            pm([x["final_by_difficulty"].get(d, float("nan")) for x in s["seeds"]]) for d in diffs
        ]
        start = [x["start_accuracy"] for x in s["seeds"]]
        final = [x["final_accuracy"] for x in s["seeds"]]
        gain = [f - a for f, a in zip(final, start, strict=True)]
        lines.append(
            f"| {NAMES[v]} | {pm(start)} | **{pm(final)}** | {pm(gain)} | "
            + " | ".join(per_d)
            + f" | {s['n']} |"
        )
    start_d = [
        pm([x["start_by_difficulty"].get(d, float("nan")) for x in vs["grpo"]["seeds"]])
        for d in diffs
    ]
    lines += [
        "",
        "Start model per difficulty: "
        + ", ".join(f"{d} digits {x}" for d, x in zip(diffs, start_d, strict=True))
        + ".",
        "",
        "**Paired with plain GRPO** (same seed: same start, same held-out set, same first batch): "
        "final accuracy minus GRPO's",
        "",
        "| variant | mean ± std of the difference | seeds better / worse |",
        "|---|---:|---:|",
    ]
    for v, s in vs.items():
        if "vs_grpo" in s:
            d = s["vs_grpo"]
            lines.append(
                f"| {NAMES[v]} | {d['mean']:+.3f} ± {d['std']:.3f} | {d['wins']} / {d['losses']} of {d['n']} |"
            )
    lines += ["", *verdicts(vs), "", curve_table(vs).rstrip()]
    seeds = sorted({x["seed"] for s in vs.values() for x in s["seeds"]})
    lines += [
        "",
        "**Every seed** (start → final greedy accuracy)",
        "",
        "| variant | " + " | ".join(f"seed {k}" for k in seeds) + " |",
        "|---|" + "---:|" * len(seeds),
    ]
    for v, s in vs.items():
        by = {x["seed"]: x for x in s["seeds"]}
        cells = [
            f"{by[k]['start_accuracy']:.3f} → {by[k]['final_accuracy']:.3f}" if k in by else "–"
            for k in seeds
        ]
        lines.append(f"| {NAMES[v]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Training** (mean over seeds)",
        "",
        "| variant | train reward, last 10 steps | best held-out accuracy | Lopti low-token share | s/step |",
        "|---|---:|---:|---:|---:|",
    ]
    for v, s in vs.items():
        low = [x["lopti_low_token_share"] for x in s["seeds"] if "lopti_low_token_share" in x]
        lines.append(
            f"| {NAMES[v]} | {pm([x['train_reward_last10'] for x in s['seeds']])} | "
            f"{pm([x['best_accuracy'] for x in s['seeds']])} | {pm(low) if low else '–'} | "
            f"{_mean([x['seconds_per_step'] for x in s['seeds']]):.2f} |"
        )
    lines += [
        "",
        "**Token-probability buckets (the paper's Fig. 1)**: share of response tokens and of the "
        "exact policy-gradient norm per π_old bucket (one backward per bucket on one micro-batch, "
        "every 10th step; mean over the steps with a gradient, then over seeds)",
        "",
        "| variant | quantity | " + " | ".join(BUCKET_NAMES) + " |",
        "|---|---|" + "---:|" * len(BUCKETS),
    ]
    for v, s in vs.items():
        with_b = [x["buckets"] for x in s["seeds"] if "buckets" in x]
        if not with_b:
            continue
        tok = [_mean([b[k]["token_share"] for b in with_b]) for k in BUCKETS]
        grad = [_mean([b[k]["grad_share"] for b in with_b]) for k in BUCKETS]
        rel = [g / t if t else float("nan") for g, t in zip(grad, tok, strict=True)]
        lines.append(f"| {NAMES[v]} | token share | " + " | ".join(f"{x:.3f}" for x in tok) + " |")
        lines.append(
            f"| {NAMES[v]} | gradient-norm share | " + " | ".join(f"{x:.3f}" for x in grad) + " |"
        )
        lines.append(
            f"| {NAMES[v]} | per-token norm / average | "
            + " | ".join(f"{x:.2f}" for x in rel)
            + " |"
        )
    abbreviations = abbreviations or {}
    if search:
        lines += [
            "",
            "**The regime search** (plain GRPO unless the setting names a variant; start → final "
            "held-out accuracy, mean ± std over the seeds run)",
            "",
            "| setting | overrides of grpo.yaml | variant | seeds | steps run | start | final | gain |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, s in search.items():
            for v, r in s["variants"].items():
                start = [x["start_accuracy"] for x in r["seeds"]]
                final = [x["final_accuracy"] for x in r["seeds"]]
                gain = [f - a for f, a in zip(final, start, strict=True)]
                over = _overrides(s["overrides"], abbreviations)
                done = "/".join(str(x["final_step"]) for x in r["seeds"])
                lines.append(
                    f"| {name} | {over} | {NAMES[v]} | {r['n']} | {done} of {s['steps']} | "
                    f"{pm(start)} | {pm(final)} | {pm(gain)} |"
                )
    return "\n".join(lines) + "\n"


def verdicts(vs: dict) -> list[str]:
    """The sentences the README's conclusions rest on, by a fixed rule (no judgement by hand).

    GRPO "clearly improves" when its mean gain is >= 0.10 (the bar set before the runs). A variant
    "helps" / "hurts" when its paired difference with GRPO has |mean| > 2 standard errors and the
    sign holds on all but at most one seed; otherwise it is "within the seed spread".
    """
    g = vs["grpo"]
    met = "met" if g["gain_mean"] >= 0.10 else "not met"
    out = [
        f"**Verdicts** (fixed rules, see `summarize.py`): plain GRPO gains {g['gain_mean']:+.3f} ± "
        f"{g['gain_std']:.3f} over its start on {g['n']} seeds — the ≥ +0.10 bar is **{met}**."
    ]
    for v, s in vs.items():
        d = s.get("vs_grpo")
        if not d or d["n"] < 2:
            continue
        se = d["std"] / d["n"] ** 0.5
        if d["mean"] > 2 * se and d["losses"] <= 1:
            word = "**helps**"
        elif d["mean"] < -2 * se and d["wins"] <= 1:
            word = "**hurts**"
        else:
            word = "is **within the seed spread** (no detectable effect)"
        out.append(
            f"{NAMES[v]} {word}: {d['mean']:+.3f} ± {d['std']:.3f} against GRPO (standard error "
            f"{se:.3f}; better on {d['wins']}, worse on {d['losses']} of {d['n']} seeds)."
        )
    return [" ".join(out)]


def _replace_between(path: Path, tag: str, body: str) -> None:
    from pmalopti.runtime.fs import atomic_write_text

    begin, end = (
        f"<!-- {tag}:begin (written by experiments/rl_effect/summarize.py) -->",
        f"<!-- {tag}:end -->",
    )
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: markers {begin!r} / {end!r} are missing")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, head + begin + "\n" + body.rstrip() + "\n" + end + tail)


def write_report(
    runs: Path,
    out: Path,
    *,
    settings: dict,
    variants: list[str],
    steps_of: Callable,
    update_docs: bool = True,
    abbreviations: dict[str, list[str]] | None = None,
) -> None:
    from pmalopti.runtime.fs import atomic_write_json, atomic_write_text

    if (runs / "grpo").is_dir():
        copy_logs(runs, out)
    for name in ("sft_scan.json", "fork.json"):  # run.py --stage scan / --stage fork
        if (runs / name).is_file():
            atomic_write_text(out / name, (runs / name).read_text())
    res = summarize(read_logs(out), settings, variants, steps_of)
    search = {k: v for k, v in res.items() if k != "main"}
    if search:
        atomic_write_json(out / "search.json", search)
    if "main" not in res or "grpo" not in res["main"]["variants"]:
        print("no finished main runs yet: search.json only")
        return
    main = res["main"]
    atomic_write_json(out / "summary.json", main)
    md = tables(main, search, abbreviations)
    if (out / "fork.json").exists():
        md += "\n" + fork_table(json.loads((out / "fork.json").read_text()), NAMES)
    if (out / "sft_scan.json").exists():
        md += "\n" + scan_table(json.loads((out / "sft_scan.json").read_text()))
    title = "# experiments/rl_effect: results (written by summarize.py from logs/)\n\n"
    atomic_write_text(out / "results.md", title + md)
    figures(main, out)  # experiments/rl_effect/figures.py
    if update_docs:  # this README's results section; docs/experiments.md via docs/build_readme.py
        _replace_between(out / "README.md", "results", md)
        import subprocess
        import sys

        root = out.parents[1]
        subprocess.run(
            [sys.executable, str(root / "docs" / "build_readme.py")], cwd=root, check=True
        )
    print(md)
