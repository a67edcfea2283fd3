"""REPORT.md and the console summary of a demo run, written from `summary.json`'s dict alone.

Every number printed here is read from the stage summaries, which are read from the runs' own
files; the verdict sentences compare numbers and say when a difference is within noise, whichever
way it goes (no method is assumed to win).
"""

from __future__ import annotations

import math

from pmalopti.pma.report import markdown_table, method_label, pma_table
from pmalopti.rl.diagnostics import BUCKET_LABELS


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def accuracy_noise(p1: float, p2: float, n: int) -> float:
    """Standard error of the difference of two accuracies measured on `n` problems each."""
    return math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(n, 1))


def compare(a: float, b: float, se: float, what: str, lower_is_better: bool = False) -> str:
    """ "A is better than B by d (d is k standard errors)" or "within noise", honestly."""
    d = (b - a) if lower_is_better else (a - b)
    if d == 0:
        return f"equal in {what}"
    if se > 0 and abs(d) < 2 * se:
        return f"the difference in {what} ({d:+.3f}) is within noise (2 standard errors = {2 * se:.3f})"
    return f"{'better' if d > 0 else 'worse'} by {abs(d):.3f} in {what}"


# --- stage 1 -----------------------------------------------------------------------------------


def pretrain_section(s: dict) -> str:
    pre, pma = s["pretrain"], s["pretrain"]["pma"]
    cfg = s["config"]["pretrain"]
    sched, first_last = cfg["schedule"], pre["stable_steps"]
    lines = [
        "## 1. Pre-training with a WSD schedule and online PMA",
        "",
        f"A {pre['parameters']:,}-parameter {cfg['model']['arch']} model learns from "
        f"{pre['corpus']['docs']:,} generated documents ({_corpus_words(pre['corpus'])}) for "
        f"{cfg['train']['steps']} steps: warmup to step {first_last[0]}, constant LR "
        f"{cfg['optim']['lr']:g} to step {first_last[1]}, then a {sched['decay_shape']} decay "
        f"over {sched['decay_steps']} steps. Checkpoints every {cfg['train']['save_every']} steps.",
        "",
        "Validation loss of the live checkpoint and of merges of the last N checkpoints "
        "(offline, from the saved checkpoints), at points of the constant-LR phase:",
        "",
        pma_table(pma),
    ]
    diff = pre["online_vs_offline_max_abs_diff"]
    if diff is not None:
        lines += [
            f"The online averagers (one per method, folding the live weights during training) "
            f"evaluated the same windows: largest difference from the offline merges "
            f"{diff:.2e} in validation loss.",
            "",
        ]
    lines += [_pretrain_verdict(pma), "", "![pre-training](figures/pretrain.png)", ""]
    lines += [f"Offline PMA figure (loss against tokens): `{_rel(s, pma_path(s))}`.", ""]
    return "\n".join(lines)


def _corpus_words(c: dict) -> str:
    if c["arithmetic_docs"] == c["docs"]:
        return "arithmetic problems with their answers, from the task's training split"
    return (
        f"{c['arithmetic_docs']:,} arithmetic problems with their answers, the rest a small "
        "knights-and-knaves grammar"
    )


def pma_path(s: dict) -> str:
    return s["pretrain"]["run"] + "/report/pma.png"


def _rel(s: dict, path: str) -> str:
    root = s["out"].rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else path


def _pretrain_verdict(pma: dict) -> str:
    if not pma["points"]:
        return "The stable phase was too short for any merge."
    last = pma["points"][-1]
    best = min(pma["methods"], key=lambda m: last[m])
    gain = last["live"] - last[best]
    text = (
        f"At step {last['step']} (end of the constant-LR phase) the best merge, "
        f"{method_label(best)}, has validation loss {last[best]:.4f} against {last['live']:.4f} "
        f"for the live model ({'better' if gain > 0 else 'not better'} by {abs(gain):.4f})"
    )
    a = pma.get("annealed")
    if a:
        anneal_gain = last["live"] - a["val_loss"]
        text += f"; the annealed model reaches {a['val_loss']:.4f}"
        if anneal_gain > 0:
            text += f", so the merge recovers {gain / anneal_gain:.0%} of the anneal's gain"
    wins = sum(1 for p in pma["points"] for m in pma["methods"] if p[m] < p["live"])
    total = len(pma["points"]) * len(pma["methods"])
    return text + f". Merges beat the live model in {wins} of {total} (point, method) cells."


# --- stage 2 -----------------------------------------------------------------------------------


def sft_section(s: dict) -> str:
    runs, pma_init = s["sft"], s["pma_init"]
    rows = []
    for name, r in runs.items():
        st, fi = r["start"], r["final"]
        rows.append(
            [
                name,
                st["val_loss"],
                _pct(st.get("accuracy", float("nan"))),
                fi["val_loss"],
                _pct(fi.get("accuracy", float("nan"))),
            ]
        )
    steps = ", ".join(str(x) for x in pma_init["steps"])
    lines = [
        "## 2. PMA-init: supervised fine-tuning from the merge vs from the latest checkpoint",
        "",
        f"`pma` is the {method_label(pma_init['method'])} merge of the checkpoints at steps {steps} "
        f"(written by the streaming `pmalopti merge` code to `{_rel(s, pma_init['path'])}`); "
        f"`latest` is the live checkpoint at step {pma_init['steps'][-1]}"
        + (", `annealed` the end of the decay phase" if "annealed" in runs else "")
        + f". Each is fine-tuned for {s['config']['sft']['train']['steps']} steps on "
        f"{s['config']['sft']['data']['task']} prompt → answer pairs (same data, seed and "
        "optimizer settings). Accuracy: greedy answers to held-out problems.",
        "",
        markdown_table(
            ["start", "val loss before", "accuracy before", "val loss after", "accuracy after"],
            rows,
        ),
    ]
    if pma_init["online_vs_offline_max_abs_weight_diff"] is not None:
        lines.append(
            "The merged weights equal the online averager's merge at that step up to "
            f"{pma_init['online_vs_offline_max_abs_weight_diff']:.1e} (largest absolute difference)."
        )
        lines.append("")
    if "pma" in runs and "latest" in runs:
        p, q = runs["pma"]["final"], runs["latest"]["final"]
        n = p.get("eval_samples", 0)
        text = "After SFT, PMA-init against the latest checkpoint: " + compare(
            p["val_loss"], q["val_loss"], 0, "validation loss", lower_is_better=True
        )
        if "accuracy" in p and "accuracy" in q:
            se = accuracy_noise(p["accuracy"], q["accuracy"], n)
            text += f"; on {n} problems, {compare(p['accuracy'], q['accuracy'], se, 'accuracy')}"
        lines += [text + " (one seed).", ""]
    lines += ["![SFT](figures/sft.png)", ""]
    return "\n".join(lines)


# --- stage 3 -----------------------------------------------------------------------------------


def grpo_section(s: dict) -> str:
    runs = s["grpo"]
    levels = sorted(
        {k.rsplit("/", 1)[1] for r in runs.values() for k in r["after"] if k.count("/") == 2},
        key=lambda x: (len(x), x),
    )
    headers = ["run", "α", "η", "accuracy before", "accuracy after"]
    headers += [f"after, difficulty {lv}" for lv in levels] + ["mean reward, last 5 steps"]
    rows = []
    for name, r in runs.items():
        last = [c["reward/mean"] for c in r["curve"][-5:]]
        rows.append(
            [
                name,
                f"{r['alpha']:g}",
                "—" if r["eta"] is None else f"{r['eta']:g}",
                _pct(r["before"]["eval/accuracy"]),
                _pct(r["after"]["eval/accuracy"]),
                *[_pct(r["after"].get(f"eval/accuracy/{lv}", float("nan"))) for lv in levels],
                sum(last) / len(last),
            ]
        )
    brows = []
    for name, r in runs.items():
        b = r["buckets"]
        brows.append(
            [name, "tokens", *[_pct(b.get(f"diag/token_share/{k}", 0)) for k in BUCKET_LABELS]]
        )
        brows.append(
            [
                name,
                "gradient norm",
                *[_pct(b.get(f"diag/grad_share/{k}", 0)) for k in BUCKET_LABELS],
            ]
        )
    g = s["config"]["grpo"]
    lines = [
        "## 3. GRPO vs GRPO + AR + Lopti",
        "",
        f"Both runs start from the SFT model initialised from `{s['config']['grpo_init']}`, with "
        f"the same seed (their first rollouts are identical: mean reward "
        + " and ".join(f"{r['first_step_reward']:.4f}" for r in runs.values())
        + f"). {g['train']['steps']} steps of {g['rollout']['prompts_per_step']} prompts × "
        f"{g['rollout']['group_size']} completions at temperature {g['rollout']['temperature']}, "
        f"lr {g['optim']['lr']:g}, clip {g['algo']['clip_low']}/{g['algo']['clip_high']}, "
        f"dual-clip {g['algo']['clip_c']}, {g['algo']['agg']}. Accuracy: greedy answers to "
        f"{g['task']['eval_size']} held-out problems; difficulty is the task's level "
        "(for arithmetic, the digits of the longer operand).",
        "",
        markdown_table(headers, rows),
        "Share of response tokens and of the policy-gradient norm per π_old bucket "
        "(the Lopti paper's Fig. 1), averaged over the steps that measured it "
        "(for the AR run, with AR's reweighted advantages):",
        "",
        markdown_table(["run", "share of", *BUCKET_LABELS], brows),
        *[
            f"({name}: no gradient at the measured steps, every group's rewards were equal.)\n"
            for name, r in runs.items()
            if not any(v for k, v in r["buckets"].items() if k.startswith("diag/grad_share/"))
        ],
        _grpo_verdict(runs, g["task"]["eval_size"]),
        "",
        "![GRPO](figures/grpo.png)",
        "",
        "![token-probability buckets](figures/buckets.png)",
        "",
    ]
    return "\n".join(lines)


def _grpo_verdict(runs: dict, n: int) -> str:
    names = list(runs)
    if len(names) != 2:
        return ""
    a, b = runs[names[1]], runs[names[0]]
    pa, pb = a["after"]["eval/accuracy"], b["after"]["eval/accuracy"]
    se = accuracy_noise(pa, pb, n)
    rewards = ", ".join(
        f"{name} {_mean([c['reward/mean'] for c in r['curve'][:5]]):.3f} → "
        f"{_mean([c['reward/mean'] for c in r['curve'][-5:]]):.3f}"
        for name, r in runs.items()
    )
    moved = ", ".join(
        f"{name} {_pct(r['before']['eval/accuracy'])} → {_pct(r['after']['eval/accuracy'])}"
        for name, r in runs.items()
    )
    return (
        f"Training reward (first → last 5 steps, sampled at temperature): {rewards}; the "
        "training problems were also in the pre-training corpus. "
        f"Held-out accuracy moved {moved}. {names[1]} against plain GRPO: "
        f"{compare(pa, pb, se, 'final accuracy')}. This is one seed of a short run on a tiny "
        "model; the paper's gains (K&K, 3B-7B models) are not expected to show at this scale."
    )


# --- the whole report --------------------------------------------------------------------------


def report_markdown(s: dict) -> str:
    t = s["timings"]
    head = [
        "# pmalopti demo",
        "",
        f"`{s['command']}` — size **{s['size']}**, seed {s['seed']}, finished in "
        f"{t['total'] / 60:.1f} min on {s['machine']}.",
        "",
        "Stage times: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total")
        + ". Every number below is also in `summary.json`.",
        "",
    ]
    files = [
        "## Files",
        "",
        "- `demo_config.yaml`: the demo's full configuration; `demo.log`: its log",
        "- `data/corpus.jsonl`: the generated pre-training corpus",
        f"- `{_rel(s, s['pretrain']['run'])}/`: the pre-training run (`config.yaml`, "
        "`metrics.jsonl`, `online_pma.jsonl`, `checkpoint-*/`, `report/pma.{md,json,png}`)",
        f"- `{_rel(s, s['pma_init']['path'])}/`: the merged model (Hugging Face folder, "
        "`pmalopti_merge.json` records inputs and weights)",
        *[
            f"- `{_rel(s, r['run'])}/`: SFT from {n} (`config.yaml`, `metrics.jsonl`, `eval.json`)"
            for n, r in s["sft"].items()
        ],
        *[
            f"- `{_rel(s, r['run'])}/`: {n} (`config.yaml`, `metrics.jsonl`, `eval_before.json`)"
            for n, r in s["grpo"].items()
        ],
        "- `figures/*.png`",
        "",
    ]
    return "\n".join([*head, pretrain_section(s), sft_section(s), grpo_section(s), *files])


def console_summary(s: dict) -> str:
    """A few lines for the terminal at the end of the run."""
    out = [f"pmalopti demo ({s['size']}, seed {s['seed']}) done in {s['timings']['total']:.0f} s"]
    pma = s["pretrain"]["pma"]
    if pma["points"]:
        last = pma["points"][-1]
        merges = "  ".join(f"{method_label(m)} {last[m]:.4f}" for m in pma["methods"])
        line = f"  pretrain step {last['step']}: live {last['live']:.4f}  {merges}"
        if pma.get("annealed"):
            line += f"  annealed {pma['annealed']['val_loss']:.4f}"
        out.append(line + "  (validation loss)")
    for name, r in s["sft"].items():
        f = r["final"]
        acc = f" accuracy {_pct(f['accuracy'])}" if "accuracy" in f else ""
        out.append(f"  SFT from {name}: val loss {f['val_loss']:.4f}{acc}")
    for name, r in s["grpo"].items():
        out.append(
            f"  {name}: accuracy {_pct(r['before']['eval/accuracy'])} -> "
            f"{_pct(r['after']['eval/accuracy'])}"
        )
    out.append(f"  report: {s['out']}/REPORT.md")
    return "\n".join(out)
