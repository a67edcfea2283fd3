"""Training speed quiet vs. beside one other CPU-bound process (goal: loaded within 2x of quiet).

Each run is a fresh `pmalopti pretrain` subprocess (the demo's full-size model shape, a few dozen
steps, no report) pinned to the same `--cores` as the busy process (a pure-Python spin loop), so
a larger machine reproduces a small one. Two thread settings are compared:

- `one per core`: `train.threads` = the number of cores, torch's own default (the old behaviour);
- `auto`: `train.threads: 0`, i.e. `pmalopti.runtime.device.auto_threads()`.

Conditions are interleaved over `--repeats`, so a machine that gets busier slows all alike; the
median wall time of each is reported with the load average seen before each run (other jobs on
a shared machine make "quiet" less quiet: read the load column).

    python benchmarks/threads_under_load.py                       # 2 cores, writes the JSON below
    python benchmarks/threads_under_load.py --cores 0 1 2 3 --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "threads_under_load.json"
RUN = [
    "model.hidden_size=96",
    "model.num_layers=3",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.vocab_size=400",
    "data.num_docs=2000",
    "data.block_size=64",
    "data.max_val_blocks=8",
    "train.batch_size=16",
    "train.eval_every=0",
    "train.progress=false",
    "schedule.warmup_steps=5",
    "schedule.decay_steps=0",
    "report.enabled=false",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cores", type=int, nargs="+", default=[0, 1], help="CPU ids to pin to")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each condition")
    p.add_argument("--out", type=Path, default=RESULT, help="JSON result file")
    return p.parse_args(argv)


def _busy(cores: list[int]) -> subprocess.Popen:
    code = f"import os; os.sched_setaffinity(0, {cores!r})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def _train(cores: list[int], threads: int, steps: int, tmp: Path) -> float:
    """Seconds of one pretrain run's optimizer steps (the sum of metrics.jsonl's step_time, so
    process start, tokenizer and model building are left out)."""
    run = tmp / f"run-{time.monotonic_ns()}"
    sets = [*RUN, f"train.steps={steps}", f"train.save_every={steps}", f"train.threads={threads}"]
    cmd = [sys.executable, "-m", "pmalopti", "pretrain", "-o", str(run)]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("PMALOPTI_THREADS", None)
    subprocess.run(
        cmd,
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return sum(json.loads(line)["step_time"] for line in lines if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = args.cores
    n = len(cores)
    settings = {"one per core": n, "auto": 0}
    times: dict[str, list[float]] = {}
    loads: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for label, threads in settings.items():
                for loaded in (False, True):
                    key = f"{label} / {'one busy process' if loaded else 'quiet'}"
                    loads.setdefault(key, []).append(os.getloadavg()[0])
                    busy = _busy(cores) if loaded else None
                    try:
                        time.sleep(0.5 if busy else 0)
                        t = _train(cores, threads, args.steps, Path(tmp))
                    finally:
                        if busy is not None:
                            busy.kill()
                            busy.wait()
                    times.setdefault(key, []).append(t)
                    print(f"repeat {r + 1}: {key:<30} {t:6.1f} s", file=sys.stderr)
    from pmalopti.runtime.threads import auto_threads

    os.sched_setaffinity(0, cores)
    rows = {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}
    for k, v in rows.items():
        v["load_avg_1min_before"] = loads[k]
    ratio = {
        label: rows[f"{label} / one busy process"]["median_s"]
        / rows[f"{label} / quiet"]["median_s"]
        for label in settings
    }
    result = {
        "command": "python benchmarks/threads_under_load.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, pinned to {cores}",
        "auto_threads_on_these_cores": auto_threads(),
        "steps": args.steps,
        "repeats": args.repeats,
        "run": RUN,
        "conditions": rows,
        "loaded_over_quiet": ratio,
        "goal": "loaded / quiet <= 2",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for label, x in ratio.items():
        print(f"{label:<14} loaded / quiet = {x:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
