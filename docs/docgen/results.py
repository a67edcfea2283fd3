"""Result tables and sentences, every number read from a committed result file.

Sources: `experiments/pma_grid/results/<tag>/summary.json`, `experiments/pma_tiny/pma.json`,
`experiments/loss_spike_recovery/logs/*.jsonl`, `experiments/rl_kk/summary_<task>.json`,
`experiments/<name>/summary*.json` of newer experiments, and `benchmarks/results/*.json`.
A missing file is an error naming it: a page that cites a result needs the result committed.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments"
GRID_METHODS = (("sma", "SMA"), ("ema:0.1", "EMA α=0.1"), ("ema:0.2", "EMA α=0.2"), ("wma", "WMA"))
GRID_N, GRID_V = 10, 20  # the grid's declared headline merge (experiments/pma_grid/README.md)
RL_VARIANTS = ("GRPO", "+AR", "+Lopti", "+AR+Lopti")
RL_LABELS = {"GRPO": "GRPO", "+AR": "+ AR", "+Lopti": "+ Lopti", "+AR+Lopti": "+ AR + Lopti"}
BUCKETS = ("p<0.25", "0.25<=p<0.5", "0.5<=p<0.75", "p>=0.75")
BUCKET_TEXT = ("π_old < 0.25", "0.25–0.5", "0.5–0.75", "≥ 0.75")


def load(rel: str) -> dict:
    path = ROOT / rel
    if not path.is_file():
        raise FileNotFoundError(f"{rel}: result file cited by the docs is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonl(rel: str) -> list[dict]:
    path = ROOT / rel
    if not path.is_file():
        raise FileNotFoundError(f"{rel}: result file cited by the docs is missing")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _pm(pair: list[float], digits: int = 4) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


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


# --- pretrain report, spike recovery -------------------------------------------------------------


def pma_tiny_table() -> str:
    from pmalopti.pma.report import pma_table

    return pma_table(load("experiments/pma_tiny/pma.json")).strip()


SPIKE_RUNS = (
    ("original", "original run (no intervention)"),
    ("pma", "PMA-init (SMA of 4), fresh AdamW"),
    ("pma-newest", "PMA-init (SMA of 4), optimizer state kept"),
    ("last", "last checkpoint, fresh AdamW"),
)


def _spike_rows() -> tuple[int, int, list[list[str]]]:
    logs = {k: _jsonl(f"experiments/loss_spike_recovery/logs/{k}.jsonl") for k, _ in SPIKE_RUNS}
    start = min(r["step"] for r in logs["pma"])
    end = min(max(r["step"] for r in rows) for rows in logs.values())
    out = []
    for key, label in SPIKE_RUNS:
        seg = [r for r in logs[key] if start <= r["step"] <= end]
        first = seg[0]["loss"]
        mean = statistics.fmean(r["loss"] for r in seg)
        val = [r["val_loss"] for r in seg if r.get("val_loss") is not None]
        out.append(
            [
                label,
                f"{first:.4f}",
                f"{mean:.4f}",
                f"{max(r['loss'] for r in seg):.4f}",
                f"{val[-1]:.4f}" if val else "–",
            ]
        )
    return start, end, out


def spike_table() -> str:
    start, end, rows = _spike_rows()
    return _table(
        [
            "run",
            f"train loss @ {start}",
            f"mean train loss {start}–{end}",
            "max",
            f"last val loss (≤ {end})",
        ],
        rows,
    )


def spike_sentence() -> str:
    _, end, rows = _spike_rows()
    by = {r[0]: r for r in rows}
    orig, fresh, kept = (by[label] for _, label in SPIKE_RUNS[:3])
    return (
        f"resuming from the merge of the 4 checkpoints before the largest loss bump starts lower "
        f"({fresh[1]} vs {orig[1]}) but does not end consistently better: validation loss by step "
        f"{end} {fresh[4]} (fresh AdamW) and {kept[4]} (optimizer state kept) vs {orig[4]} for the "
        f"original run, a mixed result"
    )


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

MERGE_BENCH = "benchmarks/results/merge_vs_mergekit.json"


def merge_benchmark() -> str:
    """The merge benchmark's table and ratio line, from its committed JSON."""
    b = load(MERGE_BENCH)
    jobs = b["jobs"]
    rows = [
        [name, f"{j['wall_s']:.2f}", f"{j['cpu_s']:.2f}", f"{j['peak_rss_gb']:.2f}"]
        for name, j in jobs.items()
    ]
    ours = jobs[f"pmalopti merge, N={b['n']}"]
    load_ = b["load_average_1min"]
    line = (
        f"{b['n']} checkpoints, {b['input_gb']:.2f} GB of bf16 safetensors, page cache warm, "
        f"{b['cpus']} CPUs, load average {load_['start']:.1f} at the start and "
        f"{load_['end']:.1f} at the end, best of {b['repeats']}: `pmalopti merge` "
        f"{ours['wall_s']:.2f} s with peak RSS {ours['peak_rss_gb']:.2f} GB"
    )
    if "mergekit_over_pmalopti_wall" in b:
        eq = b["equality"]
        line += (
            f"; mergekit {b['mergekit']} `linear` takes {b['mergekit_over_pmalopti_wall']:.1f}x "
            f"the wall time and {b['mergekit_over_pmalopti_cpu']:.1f}x the CPU time; the merged "
            f"models differ in {100 * eq['share_differ']:.2f}% of elements, "
            f"{eq['beyond_1ulp']} by more than one bf16 ulp"
        )
    return _table(["job", "wall (s)", "CPU (s)", "peak RSS (GB)"], rows) + "\n\n" + line + "."


def merge_benchmark_sentence() -> str:
    b = load(MERGE_BENCH)
    jobs = b["jobs"]
    small, big = jobs["pmalopti merge, N=2"], jobs[f"pmalopti merge, N={b['n']}"]
    text = (
        f"Merging {b['n']} bf16 checkpoints ({b['input_gb']:.2f} GB, {b['cpus']} CPUs): "
        f"`pmalopti merge` {big['wall_s']:.1f} s, peak memory {small['peak_rss_gb']:.2f} GB at "
        f"N = 2 and {big['peak_rss_gb']:.2f} GB at N = {b['n']}"
    )
    if "mergekit_over_pmalopti_wall" in b:
        mk = jobs[f"mergekit linear, N={b['n']}"]
        text += (
            f"; mergekit {b['mergekit']} takes {b['mergekit_over_pmalopti_wall']:.1f}× the wall "
            f"time and {mk['peak_rss_gb']:.2f} GB, for the same result up to one bf16 rounding step"
            if b["equality"]["beyond_1ulp"] == 0
            else f"; mergekit {b['mergekit']} takes {b['mergekit_over_pmalopti_wall']:.1f}× the "
            f"wall time and {mk['peak_rss_gb']:.2f} GB"
        )
    return text


def threads_benchmark() -> str:
    """benchmarks/threads_under_load.py: median step time per condition and loaded / quiet."""
    b = load("benchmarks/results/threads_under_load.json")
    rows = [
        [name, f"{c['median_s']:.1f}", ", ".join(f"{x:.0f}" for x in c["load_avg_1min_before"])]
        for name, c in b["conditions"].items()
    ]
    ratio = "; ".join(f"{k} {v:.2f}" for k, v in b["loaded_over_quiet"].items())
    line = (
        f"{b['steps']} steps, median of {b['repeats']}, {b['machine']}; auto = "
        f"{b['auto_threads_on_these_cores']} thread(s) there. Loaded / quiet: {ratio} "
        f"(goal {b['goal'].split('<= ')[-1]})"
    )
    headers = ["threads / condition", f"{b['steps']} steps (s)", "load average before"]
    return _table(headers, rows) + "\n\n" + line + "."


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
        f"in the regime where plain GRPO learns ({s['steps']} steps, {base['n']} "
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
        f"- [Loss-spike recovery](experiments/loss_spike_recovery/README.md): {spike_sentence()}"
        " (a bump, not a spike: the tiny model would not spike).",
        "",
        "**AR and Lopti for GRPO, tiny models** ([every seed](experiments/rl_kk/README.md))",
        f"- The paper's Fig. 1 reproduces: {fig1}.",
        f"- The paper's accuracy gains do not reproduce at this scale. {acc}.",
        *(
            [f"- [GRPO where it learns](experiments/rl_effect/README.md): {rl_effect_sentence()}."]
            if (ROOT / RL_EFFECT).is_file()
            else []
        ),
        "",
        "**Benchmarks** ([benchmarks](docs/benchmarks.md))",
        f"- {merge_benchmark_sentence()}.",
        gpu_sentence(),
    ]
    return "\n".join(lines)


# --- hostile inputs ----------------------------------------------------------------------------


def reward_worst_case() -> str:
    """The math reward's worst case per response (benchmarks/reward_worst_case.py)."""
    res = load("benchmarks/results/reward_worst_case.json")
    h, legit = res["hostile"], res["legit"]
    return (
        f"Measured by `python benchmarks/reward_worst_case.py` "
        f"([result](../benchmarks/results/reward_worst_case.json), {res['cpus']} cores, load "
        f"{res['load_avg']}): over {h['cases']} hostile responses the worst case per response is "
        f"{h['main_thread']['worst_s']} s from the main thread and "
        f"{h['worker_thread']['worst_s']} s from a worker thread ({h['screened']} refused by the "
        f"screen; {h['timed_out_calls']} of the {2 * h['cases']} calls stopped by the "
        f"{res['timeout_s']} s deadline and scored 0); {legit['correct']} of {legit['cases']} calls on "
        f"legitimate answers score 1, the slowest in {legit['worst_s']} s."
    )


def hostile_round() -> str:
    """The hostile-input round's figures (tests/hostile/make_results.py)."""
    r = load("tests/hostile/results.json")
    c = r["counts"]
    return (
        f"{r['cases']} cases tried across every command, {r['held']} held: "
        f"{c['clear error']} clear errors and {c['handled']} cases handled; "
        f"{c['traceback']} tracebacks, {c['unclear error']} unclear errors, "
        f"{c['data lost']} with data lost, {c['leak']} leaks "
        f"([details](../tests/hostile/RESULTS.md))."
    )


# --- GPU check ---------------------------------------------------------------------------------


def gpu_check_files() -> list[Path]:
    """Committed GPU runs of benchmarks/gpu_check.py (the CPU miniature is not a GPU number)."""
    out = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("gpu_check_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("mode") != "cpu-tiny":
            out.append(path)
    return out


def _section(data: dict, name: str) -> dict | None:
    sec = data.get("sections", {}).get(name) or {}
    return sec.get("result") if sec.get("status") == "ok" else None


def gpu_sentence() -> str:
    files = gpu_check_files()
    if not files:
        return (
            "- Not yet measured: the prepared check `benchmarks/gpu_check.py` has not run on a GPU."
        )
    lines = []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        env = _section(data, "environment") or {}
        rel = path.relative_to(ROOT).as_posix()
        parts = []
        grpo = _section(data, "grpo")
        if grpo:
            base = grpo["grpo"]
            parts.append(
                f"built-in GRPO {base['steps_per_s']:.2f} steps/s "
                f"({base['generated_tokens_per_s']:.0f} generated tokens/s)"
            )
            for key, label in (("grpo+ar", "+ AR"), ("grpo+ar+lopti", "+ AR + Lopti")):
                if key in grpo and "step_time_vs_grpo" in grpo[key]:
                    parts.append(f"{label} {grpo[key]['step_time_vs_grpo']:.2f}× its step time")
        online = _section(data, "online_averager")
        if online and "accumulators_same" in online:
            share = online["accumulators_same"]["inside_over_baseline_step"]
            parts.append(f"online averager at V = {online['interval']}: {share:.1%} of a step")
        merge = _section(data, "merge")
        if merge:
            parts.append(
                f"merge of {merge['checkpoints']} checkpoints {merge['read_gb_per_s']:.2f} GB/s read"
            )
        device = env.get("device_name", path.stem)
        lines.append(f"- One {device} ([{path.name}]({rel})): " + "; ".join(parts) + ".")
    return "\n".join(lines)


# --- DCP merge and online writes under FSDP2 (benchmarks/merge_dcp.py, online_write_fsdp2.py) --


def merge_dcp_table() -> str:
    r = load("benchmarks/results/merge_dcp.json")
    rows = [
        [name, f"{v['wall_s']:.2f}", f"{v['cpu_s']:.2f}", f"{v['peak_rss_gb']:.2f}"]
        for name, v in r["rows"].items()
    ]
    n, gb = r["checkpoints"], r["gb_per_checkpoint"]
    head = f"job ({n} DCP checkpoints of {gb:.2f} GB, {r['layout']})"
    cmp = r["ours_vs_alternative"]
    return (
        _table([head, "wall (s)", "CPU (s)", "peak RSS (GB)"], rows)
        + f"\n\nMeasured {r['date_utc']} on {r['machine']['cpus']} CPUs shared with other jobs "
        f"(load average {r['load_average_before'][0]:.1f} before, "
        f"{r['load_average_after'][0]:.1f} after: absolute times are inflated). "
        + (
            "The two merged checkpoints are identical, bit for bit."
            if cmp["max_abs"] == 0
            else f"The two merged checkpoints differ by at most {cmp['max_abs']:.2g} "
            f"({cmp['share_differ']:.2%} of elements)."
        )
    )


def online_write_table() -> str:
    r = load("benchmarks/results/online_write_fsdp2.json")
    names = {
        "full": "`merged_state_dict(full=True)` + rank-0 HF write (before)",
        "hf": "`save_merge_hf`: gathered to rank 0 one tensor at a time",
        "dcp": "`save_merge_dcp`: every rank saves its shards",
    }
    rows = [
        [
            names[k],
            f"{v['seconds']:.2f}",
            f"{v['peak_above_gb'][0]:.3f}",
            f"{v['peak_above_gb'][1]:.3f}",
        ]
        for k, v in r["ways"].items()
    ]
    head = (
        f"writing the merge of a {r['parameters'] / 1e6:.0f}M-parameter FSDP2 model "
        f"({r['model_gb_float32']:.2f} GB float32), {r['ranks']} gloo ranks"
    )
    return (
        _table([head, "wall (s)", "rank 0 peak above (GB)", "rank 1 peak above (GB)"], rows)
        + f"\n\nMeasured {r['date_utc']} (load average {r['load_average_before'][0]:.1f})."
    )
