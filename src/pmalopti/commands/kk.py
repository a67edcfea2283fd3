"""`pmalopti kk`: generate Knights and Knaves puzzles and score model responses.

pmalopti kk generate --people 3 --people-max 7 --n 1000 --seed 0 -o train.parquet
pmalopti kk generate --people 5 --n 100 --split test -o test5.jsonl
pmalopti kk score --data test.parquet --responses responses.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from pmalopti.runtime.fs import iter_jsonl


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "kk",
        help="Knights and Knaves puzzles: generate, score responses",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="kk_command", metavar="ACTION", required=True)

    g = sub.add_parser("generate", help="write puzzles with exactly one solution")
    g.add_argument("--people", type=int, default=3, help="fewest people per puzzle (2-8)")
    g.add_argument("--people-max", type=int, help="most people (default: --people)")
    g.add_argument("--n", type=int, default=1000, help="number of puzzles")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="puzzles of a split never appear in the other, whatever the seed",
    )
    g.add_argument("--depth", type=int, default=2, help="statement depth limit (leaf = 1)")
    g.add_argument("--width", type=int, default=2, help="most operands of and/or")
    g.add_argument("--test-percent", type=int, default=10, help="share of puzzles in 'test'")
    g.add_argument(
        "--max-tries",
        type=int,
        default=20_000,
        help="give up after this many draws in a row without a new puzzle (default 20000)",
    )
    g.add_argument("-o", "--output", required=True, help="output .parquet or .jsonl")
    g.add_argument("--force", action="store_true", help="replace an existing output")
    g.set_defaults(func=run_generate)

    s = sub.add_parser("score", help="reward and accuracy per number of people")
    s.add_argument("--data", required=True, help="puzzles (.parquet or .jsonl)")
    s.add_argument(
        "--responses",
        required=True,
        help="jsonl, one response per line: a JSON string or an object with the text in "
        "--field; line k answers puzzle row k, or the row given by an integer 'row' field",
    )
    s.add_argument("--field", default="response", help="response text field (default: response)")
    s.add_argument(
        "--no-think-prefilled",
        dest="think_prefilled",
        action="store_false",
        help="the prompts did not end in <think>; score the response text as it is",
    )
    s.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    s.set_defaults(func=run_score)


def run_generate(args) -> int:
    from pmalopti.tasks.kk import generate_records, write_puzzles

    out = Path(args.output)
    if out.suffix not in (".parquet", ".jsonl"):
        raise ValueError(f"--output: {out} must end in .parquet or .jsonl")
    if out.is_dir():
        raise ValueError(f"--output: {out} is a folder; give a file name")
    if out.exists() and not args.force:
        raise FileExistsError(f"output {out} already exists (use --force to replace it)")
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    records = generate_records(
        args.n,
        split=args.split,
        seed=args.seed,
        people=args.people,
        people_max=args.people_max,
        depth=args.depth,
        width=args.width,
        test_percent=args.test_percent,
        max_tries=args.max_tries,
        progress=sys.stderr.isatty(),
    )
    write_puzzles(records, out, force=args.force)
    counts: dict[int, int] = defaultdict(int)
    for r in records:
        counts[len(r["names"])] += 1
    by = ", ".join(f"{k} people: {v}" for k, v in sorted(counts.items()))
    print(f"wrote {len(records)} puzzles to {out} ({by})", file=sys.stderr)
    return 0


def _read_responses(path: Path, field: str, n_rows: int) -> list[tuple[int, str]]:
    """(row, text) per response. The k-th line without a 'row' field answers puzzle k: such lines
    must cover every puzzle exactly once (or be absent); lines with a 'row' may add any others."""
    if not path.is_file():
        raise FileNotFoundError(f"--responses: {path} does not exist")
    out: list[tuple[int, str]] = []
    positional = 0
    for k, obj in iter_jsonl(path, f"--responses: {path}"):
        where = f"{path}: line {k}"
        if isinstance(obj, str):
            row, text = positional, obj
            positional += 1
        elif isinstance(obj, dict):
            if not isinstance(obj.get(field), str):
                raise ValueError(f"{where}: field {field!r} is missing or not a string")
            row, text = obj.get("row", positional), obj[field]
            positional += "row" not in obj
            if not isinstance(row, int) or isinstance(row, bool):
                raise ValueError(f"{where}: field 'row' must be an integer, got {row!r:.40}")
        else:
            raise ValueError(f"{where}: expected a JSON string or object")
        if not 0 <= row < n_rows:
            raise ValueError(f"{where}: row {row} is out of range (the data has {n_rows} rows)")
        out.append((row, text))
    if positional and positional != n_rows:
        raise ValueError(
            f"--responses: {path} holds {positional} responses without a 'row' field for the "
            f"{n_rows} puzzles of --data; give one per puzzle, in order (or an integer 'row' "
            "field on each line)"
        )
    return out


def score_table(rows: list[dict], responses: list[tuple[int, str]], *, think_prefilled: bool):
    """{people: {"n", "accuracy", "mean_reward", "format_ok"}} plus an "all" row."""
    from pmalopti.tasks.kk import MAX_SCORE, kk_score

    acc: dict[object, list[tuple[float, float]]] = defaultdict(list)
    for row, text in responses:
        r = rows[row]
        total, parts = kk_score(text, r["names"], r["solution"], think_prefilled=think_prefilled)
        for key in (len(r["names"]), "all"):
            acc[key].append((total, parts["format"]))
    table = {}
    for key in [*sorted((k for k in acc if k != "all"), key=int), "all"]:
        vals = acc[key]
        n = len(vals)
        table[key] = {
            "n": n,
            "accuracy": sum(t >= MAX_SCORE for t, _ in vals) / n,
            "mean_reward": sum(t for t, _ in vals) / n,
            "format_ok": sum(f > 0 for _, f in vals) / n,
        }
    return table


def run_score(args) -> int:
    from pmalopti.runtime.fs import atomic_write_json, check_output_file
    from pmalopti.tasks.kk import load_puzzles

    if args.json:
        check_output_file(args.json, force=True, inputs=[args.data, args.responses], flag="--json")
    rows = load_puzzles(args.data)
    responses = _read_responses(Path(args.responses), args.field, len(rows))
    if not responses:
        raise ValueError(f"--responses: {args.responses} holds no responses")
    table = score_table(rows, responses, think_prefilled=args.think_prefilled)
    print(f"{'people':>6} {'n':>6} {'accuracy':>9} {'mean_reward':>12} {'format_ok':>10}")
    for key, t in table.items():
        print(
            f"{key!s:>6} {t['n']:>6} {t['accuracy']:>9.3f} {t['mean_reward']:>12.3f} "
            f"{t['format_ok']:>10.3f}"
        )
    if args.json:
        atomic_write_json(Path(args.json), {str(k): v for k, v in table.items()})
    return 0
