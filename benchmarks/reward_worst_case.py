"""Worst case per response of the math reward over a hostile corpus, main thread and worker thread.

Scores every response of a hostile corpus (power towers, huge exponents and factorials, deep
nesting, megabyte strings, answers sympy chews on for seconds) and of a small legitimate corpus
with `get_task("math").reward`, once from the main thread and once from a worker thread (where
math-verify's own SIGALRM timeout does not work), timing each call. Writes
`benchmarks/results/reward_worst_case.json`; `python docs/build_readme.py` then renders the
summary line of docs/tasks.md from it.

    python benchmarks/reward_worst_case.py            # ~30 s
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "reward_worst_case.json"

NEST = 200
HOSTILE: list[tuple[str, str, str]] = [
    # (name, response, reference answer)
    ("power tower 10^{10^{10}}", "\\boxed{10^{10^{10}}}", "1"),
    ("power tower 9^{9^{9}}", "\\boxed{9^{9^{9}}}", "1"),
    ("unbraced tower 2^2^2^2^2", "\\boxed{2^2^2^2^2}", "4"),
    ("python tower 10**10**10", "\\boxed{10**10**10}", "1"),
    ("tower against a tower", "\\boxed{10^{10^{10}}}", "10^{10^{10}}"),
    ("huge exponent 2^{100000}", "\\boxed{2^{100000}}", "2"),
    ("huge negative exponent", "\\boxed{10^{-10000000}}", "0"),
    ("huge factorial 100000!", "\\boxed{100000!}", "1"),
    ("factorial tower ((10!)!)!", "\\boxed{((10!)!)!}", "1"),
    ("sum to 10^{10}", "\\boxed{\\sum_{k=1}^{10^{10}} k}", "1"),
    ("binomial of 10^6", "\\boxed{\\binom{10^{6}}{5000}}", "1"),
    ("sum of 9999 powers", "\\boxed{\\sum_{k=1}^{9999} k^{9999}}", "1"),
    ("product to 9999", "\\boxed{\\prod_{k=1}^{9999} k}", "1"),
    ("polynomial (x+1)^{9999}", "\\boxed{(x+1)^{9999}}", "(x+1)^{9998}(x+1)"),
    ("big power 9999^{9999}", "\\boxed{9999^{9999}}", "9999^{9999}+1"),
    ("nested fractions", "\\boxed{" + "\\frac{1}{" * NEST + "2" + "}" * NEST + "}", "2"),
    ("nested roots", "\\boxed{" + "\\sqrt{" * NEST + "2" + "}" * NEST + "}", "2"),
    ("nested parentheses", "\\boxed{" + "(" * 900 + "1" + ")" * 900 + "}", "1"),
    ("symbolic tower x^{x^{x^{x}}}", "\\boxed{x^{x^{x^{x}}}}", "x^{x^{x^{x}}}"),
    ("long sum 1+1+...", "\\boxed{" + "+".join(["1"] * 450) + "}", "450"),
    ("long float", "\\boxed{1e999999}", "1"),
    ("megabyte of x", "x" * 1_000_000, "1"),
    ("megabyte of \\boxed{", "\\boxed{" * 140_000, "1"),
    ("megabyte of {", "{" * 1_000_000, "1"),
    ("megabyte of closing braces", "\\boxed{1}" + "}" * 1_000_000, "1"),
    ("megabyte number after ####", "#### " + "9" * 1_000_000, "1"),
    ("#### repeated", "#### " * 200_000, "1"),
    ("boxes in a megabyte", "\\boxed{1} " * 100_000, "1"),
]
LEGIT: list[tuple[str, str]] = [
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{5\\sqrt{2}}", "\\sqrt{50}"),
    ("\\boxed{x = 4}", "4"),
    ("#### 54", "54"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{2^{10}}", "1024"),
    ("\\boxed{\\frac{\\pi}{2}}", "\\frac{\\pi}{2}"),
    ("\\boxed{(1, 2)}", "(1,2)"),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2"),
    ("\\boxed{\\binom{10}{3}}", "120"),
    ("\\boxed{10!}", "3628800"),
    ("\\boxed{2^{2^{3}}}", "256"),
    ("\\boxed{\\{1, 2, 3\\}}", "\\{3, 2, 1\\}"),
    ("\\boxed{[0, 1)}", "[0,1)"),
]


def run_corpus(task, cases: list[tuple[str, str, str]]) -> list[dict]:
    out = []
    for name, response, gold in cases:
        start = time.perf_counter()
        reward = task.reward(response, {"answer": gold})
        out.append({"name": name, "seconds": time.perf_counter() - start, "reward": reward})
    return out


def in_thread(fn, *args):
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(result=fn(*args)), daemon=True)
    t.start()
    t.join(600)
    if t.is_alive():
        raise SystemExit("a reward call from a worker thread did not return in 10 minutes")
    return box["result"]


def summary(rows: list[dict]) -> dict:
    worst = max(rows, key=lambda r: r["seconds"])
    return {
        "worst_s": round(worst["seconds"], 3),
        "worst_case": worst["name"],
        "mean_s": round(sum(r["seconds"] for r in rows) / len(rows), 4),
        "total_s": round(sum(r["seconds"] for r in rows), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)

    from pmalopti.tasks import get_task
    from pmalopti.tasks.math import extract_answer
    from pmalopti.tasks.math_screen import screen_answer
    from pmalopti.tasks.verify_worker import shared_pool

    task = get_task("math")
    pool = shared_pool(task.timeout_s)
    task.reward("\\boxed{1}", {"answer": "1"})  # start the workers (first use, not timed)
    before = pool.timeouts
    main_rows = run_corpus(task, HOSTILE)
    thread_rows = in_thread(run_corpus, task, HOSTILE)
    timed_out = pool.timeouts - before
    legit_cases = [(r, r, g) for r, g in LEGIT]
    legit_rows = run_corpus(task, legit_cases) + in_thread(run_corpus, task, legit_cases)
    screened = sum(
        1 for _, r, _ in HOSTILE if (a := extract_answer(r)) is None or screen_answer(a) is not None
    )
    res = {
        "timeout_s": task.timeout_s,
        "cpus": os.cpu_count(),
        "load_avg": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "hostile": {
            "cases": len(HOSTILE),
            "screened": screened,
            "timed_out_calls": timed_out,
            "main_thread": summary(main_rows),
            "worker_thread": summary(thread_rows),
            "per_case": [
                {
                    "name": name,
                    "chars": len(resp),
                    "main_s": round(m["seconds"], 4),
                    "thread_s": round(t["seconds"], 4),
                    "reward": m["reward"],
                }
                for (name, resp, _), m, t in zip(HOSTILE, main_rows, thread_rows, strict=True)
            ],
        },
        "legit": {
            "cases": len(legit_rows),
            "correct": sum(r["reward"] == 1.0 for r in legit_rows),
            "worst_s": round(max(r["seconds"] for r in legit_rows), 3),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    h = res["hostile"]
    print(
        f"worst case per response: {h['main_thread']['worst_s']} s (main thread), "
        f"{h['worker_thread']['worst_s']} s (worker thread); wrote {args.out}; "
        "now run python docs/build_readme.py"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
