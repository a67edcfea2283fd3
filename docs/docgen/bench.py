"""Benchmark tables and sentences, every number read from `benchmarks/results/*.json`."""

from __future__ import annotations

import json
from pathlib import Path

from docgen import common
from docgen.common import _table, load

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
    if b.get("pmalopti_imports_torch") is False:
        line += " without importing torch"
    if "pmalopti_equals_torch_merge" in b:
        same = b["pmalopti_equals_torch_merge"]
        line += (
            ", the same bits as torch's in-memory merge"
            if same
            else ", NOT the same bits as torch's in-memory merge"
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
    for path in sorted((common.ROOT / "benchmarks" / "results").glob("gpu_check_*.json")):
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
        rel = path.relative_to(common.ROOT).as_posix()
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
    busy = r["load_average_before"][0] > r["machine"]["cpus"]
    return (
        _table([head, "wall (s)", "CPU (s)", "peak RSS (GB)"], rows)
        + f"\n\nMeasured {r['date_utc']} on {r['machine']['cpus']} CPUs "
        f"(load average {r['load_average_before'][0]:.1f} before, "
        f"{r['load_average_after'][0]:.1f} after"
        + ("; shared with other jobs: absolute times are inflated). " if busy else "). ")
        + (
            "The two merged checkpoints are identical, bit for bit."
            if cmp["max_abs"] == 0
            else f"The two merged checkpoints differ by at most {cmp['max_abs']:.2g} "
            f"({cmp['share_differ']:.2%} of elements), a rounding difference: the "
            "alternative's `add_(x, alpha=w)` fuses the multiply-add and pmalopti rounds the "
            "product first (docs/merge.md)."
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
