"""Timing of the K&K generator, solver and reward: `python -m pmalopti.tasks.kk.bench`.

Prints a markdown table. Solving is timed on puzzles generated beforehand (parsing included when
the statements are given as text, as they are read from files).
"""

from __future__ import annotations

import argparse
import time

from pmalopti.tasks.kk.generate import iter_puzzles
from pmalopti.tasks.kk.parse import format_statements
from pmalopti.tasks.kk.reward import kk_reward
from pmalopti.tasks.kk.solve import solve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000, help="puzzles per size")
    ap.add_argument("--people", type=int, nargs="+", default=[3, 5, 8])
    args = ap.parse_args(argv)
    print(
        "| people | puzzles | generate (s) | solve from text (s) | solve (us/puzzle) | reward (us/response) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for k in args.people:
        t0 = time.perf_counter()
        puzzles = list(iter_puzzles(args.n, people=k, seed=0))
        t1 = time.perf_counter()
        texts = [format_statements(p["statements"]) for p in puzzles]
        t2 = time.perf_counter()
        for text in texts:
            solve(text)
        t3 = time.perf_counter()
        responses = [
            " check </think>\n<answer>"
            + "\n".join(
                f"({i + 1}) {n} is a {'knight' if s else 'knave'}"
                for i, (n, s) in enumerate(zip(p["names"], p["solution"], strict=True))
            )
            + "</answer>"
            for p in puzzles
        ]
        t4 = time.perf_counter()
        for r, p in zip(responses, puzzles, strict=True):
            kk_reward(r, p["names"], p["solution"])
        t5 = time.perf_counter()
        n = len(puzzles)
        print(
            f"| {k} | {n} | {t1 - t0:.2f} | {t3 - t2:.2f} | "
            f"{1e6 * (t3 - t2) / n:.0f} | {1e6 * (t5 - t4) / n:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
