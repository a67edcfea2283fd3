"""Read and write Knights and Knaves puzzle files (parquet or jsonl) in the published columns.

Columns written: `quiz`, `names`, `solution`, `solution_text`, `solution_text_format`,
`statements` (Python-literal text), `index`, `data_source`, `prompt` (one chat message whose
content ends in `<|im_start|>assistant\\n<think>`), `ability`, `reward_model`, `extra_info`;
the last four make the file a verl RL dataset as it is. Reading checks every row and names the
row and field of the first problem found.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pmalopti.runtime.fs import iter_jsonl
from pmalopti.tasks.base import chat_prompt
from pmalopti.tasks.kk.parse import StatementError, Tree, format_statements, parse_statements
from pmalopti.tasks.kk.render import SYSTEM_PROMPT, solution_text, solution_text_format
from pmalopti.tasks.kk.solve import MAX_PEOPLE, solve

DATA_SOURCE = "kk_logic"
SUFFIXES = (".parquet", ".jsonl")


class PuzzleError(ValueError):
    """A puzzle row that is missing a field or contradicts itself."""


def puzzle_record(
    names: Sequence[str],
    statements: Sequence[Tree],
    solution: Sequence[bool],
    quiz: str,
    *,
    index: int,
    split: str,
) -> dict[str, Any]:
    """One row in the published layout."""
    fmt = solution_text_format(names, solution)
    text = format_statements(tuple(statements))
    return {
        "quiz": quiz,
        "names": list(names),
        "solution": [bool(s) for s in solution],
        "solution_text": solution_text(names, solution),
        "solution_text_format": fmt,
        "statements": text,
        "index": index,
        "data_source": DATA_SOURCE,
        "prompt": [
            {"content": chat_prompt(SYSTEM_PROMPT, quiz, prefill="<think>"), "role": "user"}
        ],
        "ability": "logic",
        "reward_model": {
            "ground_truth": {"solution_text_format": fmt, "statements": text},
            "style": "rule",
        },
        "extra_info": {"index": index, "split": split},
    }


def parse_solution_text_format(text: str) -> tuple[list[str], list[bool]]:
    """Names and roles from "(1) Ada is a knight\\n(2) Bruno is a knave"."""
    names, roles = [], []
    for k, line in enumerate(text.strip().splitlines(), 1):
        head, sep, tail = line.strip().rpartition(" is a ")
        prefix = f"({k}) "
        if not sep or not head.startswith(prefix) or tail.lower() not in ("knight", "knave"):
            raise PuzzleError(f"line {k} {line!r:.60} is not '({k}) Name is a knight|knave'")
        names.append(head[len(prefix) :].strip())
        roles.append(tail.lower() == "knight")
    return names, roles


def check_puzzle(row: Mapping[str, Any], where: str, *, verify: bool = True) -> dict[str, Any]:
    """A copy of `row` with `names` (list[str]), `solution` (list[bool]) and `statements`
    (text) normalised and checked; `verify` also re-solves the puzzle and requires its unique
    solution to equal `solution`."""
    out = dict(row)
    for field in ("names", "statements"):
        if field not in row or row[field] is None:
            raise PuzzleError(f"{where}: missing field {field!r}")
    names = row["names"]
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise PuzzleError(f"{where}: field 'names' must be a list of names, got {names!r:.60}")
    names = list(names)
    if not 1 <= len(names) <= MAX_PEOPLE:
        raise PuzzleError(f"{where}: field 'names' has {len(names)} people, not 1..{MAX_PEOPLE}")
    if any(not isinstance(x, str) or not x.strip() for x in names) or len(set(names)) < len(names):
        raise PuzzleError(f"{where}: field 'names' must hold distinct non-empty strings: {names}")
    text = row["statements"]
    if not isinstance(text, str | list | tuple):
        raise PuzzleError(
            f"{where}: field 'statements' must be text or a list, got {type(text).__name__}"
        )
    try:
        trees = parse_statements(
            text if isinstance(text, str) else format_statements(text), len(names)
        )
    except StatementError as exc:
        raise PuzzleError(f"{where}: field 'statements': {exc}") from None
    except RecursionError:
        raise PuzzleError(f"{where}: field 'statements' is nested too deep") from None
    solution = row.get("solution")
    if solution is not None:
        if isinstance(solution, str) or not isinstance(solution, Iterable):
            raise PuzzleError(f"{where}: field 'solution' must be a list of booleans")
        solution = list(solution)
        if len(solution) != len(names) or any(not isinstance(s, bool) for s in solution):
            raise PuzzleError(
                f"{where}: field 'solution' must be {len(names)} booleans, got {solution!r:.80}"
            )
    if verify or solution is None:
        found = solve(trees, len(names))
        if len(found) != 1:
            raise PuzzleError(
                f"{where}: field 'statements' has {len(found)} consistent assignments, not exactly 1"
            )
        if solution is not None and tuple(solution) != found[0]:
            raise PuzzleError(
                f"{where}: field 'solution' {solution} contradicts the statements "
                f"(their only solution is {list(found[0])})"
            )
        solution = list(found[0])
    out.update(names=names, solution=solution, statements=format_statements(trees))
    return out


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [row for _, row in iter_jsonl(path, error=PuzzleError, objects=True)]
    raise ValueError(f"{path}: unsupported file type; use one of {SUFFIXES}")


def load_puzzles(path: str | os.PathLike, *, verify: bool = True) -> list[dict[str, Any]]:
    """All puzzles of a parquet/jsonl file, each checked (see `check_puzzle`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"puzzle file {path} does not exist")
    rows = _read_rows(path)
    return [check_puzzle(r, f"{path}: row {i}", verify=verify) for i, r in enumerate(rows)]


def write_puzzles(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write rows to .parquet or .jsonl atomically (temporary file, then rename)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type; use one of {SUFFIXES}")
    if path.exists() and not force:
        raise FileExistsError(f"output {path} already exists (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([dict(r) for r in records]), tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
