"""Math word problems (GSM8K, MATH-style) scored with the `math-verify` library.

Reward 1.0 when the response's final answer is mathematically equal to the reference
(`math_verify.verify`), else 0.0. The final answer is the last `\\boxed{...}` (or `\\fbox{...}`) or
GSM8K-style `#### n` line, whichever comes last. `answer_format="any"` instead lets math-verify
find an answer anywhere in the response's tail (e.g. "The answer is 5."), for models that were not
told to box. `math-verify` is the extra `math`: `pip install 'pmalopti[math]'`.

math-verify runs in worker processes under a hard deadline (`timeout_s`, default 0.8 s per
response) that works from any thread; an answer that misses it, or is hostile on its face (a power
tower, a huge exponent, deep nesting), scores 0 (`pmalopti.tasks.verify_worker`).
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pmalopti.runtime.fs import iter_jsonl
from pmalopti.tasks.base import Task, chat_prompt, register_task
from pmalopti.tasks.math_screen import screen_answer
from pmalopti.tasks.verify_worker import DEFAULT_TIMEOUT_S, shared_pool

AnswerFormat = Literal["boxed", "any"]
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
MAX_ANSWER_CHARS = 1000
"""Longer extracted answers score 0 without being parsed (a hostile response cannot stall)."""
ANY_TAIL_CHARS = 2000
"""With answer_format="any", math-verify reads only this many characters at the response's end."""


def _math_verify() -> None:
    """Raise a clear ImportError when math-verify is missing (it is imported by the workers)."""
    if importlib.util.find_spec("math_verify") is None:
        raise ImportError(
            "the math task needs the 'math-verify' package: pip install 'pmalopti[math]'"
        )


MAX_OPEN_BOXES = 64
"""Unclosed boxes tried (from the end) before giving up, so junk full of boxes stays cheap."""


def _closing_brace(text: str, i: int, limit: int) -> int | None:
    """Index of the brace closing the `{` at `i`, searching before `limit`."""
    seg = text[i:limit]
    codes = np.frombuffer(seg.encode("utf-32-le"), dtype=np.uint32)  # (L,)
    depth = np.cumsum((codes == ord("{")).astype(np.int64) - (codes == ord("}")))  # (L,)
    closed = np.flatnonzero(depth == 0)
    return i + int(closed[0]) if closed.size else None


def last_boxed(text: str) -> tuple[int, str] | None:
    """(position, content) of the last `\\boxed{...}`/`\\fbox{...}` with balanced braces.

    An unclosed last box (a truncated generation) falls back to the one before. Linear time:
    an earlier box still open where a later unclosed box starts can never close, so each scan
    stops at the previous failure.
    """
    best: tuple[int, str] | None = None
    for macro in ("\\boxed", "\\fbox"):
        limit, tries = len(text), 0
        start = text.rfind(macro)
        while start >= 0 and tries < MAX_OPEN_BOXES:
            i = start + len(macro)
            while i < limit and text[i] == " ":
                i += 1
            j = _closing_brace(text, i, limit) if i < limit and text[i] == "{" else None
            if j is not None:
                if best is None or start > best[0]:
                    best = (start, text[i + 1 : j].strip())
                break
            limit, tries = start, tries + 1
            start = text.rfind(macro, 0, start)
    return best


def last_hashes(text: str) -> tuple[int, str] | None:
    """(position, rest of the line) of the last GSM8K-style `#### answer`."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    end = text.find("\n", pos)
    answer = text[pos + 4 : end if end >= 0 else len(text)].strip()
    return (pos, answer) if answer else None


def extract_answer(text: str) -> str | None:
    """The final answer: whichever of the last `\\boxed{}` and the last `#### n` comes later."""
    found = [x for x in (last_boxed(text), last_hashes(text)) if x is not None]
    return max(found)[1] if found else None


def reference_answer(ref: Any) -> str:
    """The reference's final answer: after `####` (GSM8K), inside `\\boxed{}` (MATH), or as is."""
    text = str(ref).strip()
    return extract_answer(text) or text


def verify_answer(pred: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """math-verify equality of two answer strings (LaTeX or plain), never slower than `timeout_s`.

    Runs in a worker process with a hard deadline (works from any thread); an answer that is
    hostile on its face (`screen_answer`) or misses the deadline counts as not equal.
    """
    _math_verify()  # a clear message when the extra is missing, before any worker starts
    if screen_answer(pred) is not None or screen_answer(gold) is not None:
        return False
    return shared_pool(timeout_s).verify(pred, gold)


def _read_rows(path: Path) -> list:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [row for _, row in iter_jsonl(path)]
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return rows
    raise ValueError(f"{path}: unsupported file type; use .jsonl, .json or .parquet")


@register_task("math")
class MathTask(Task):
    """Problems from a jsonl/parquet file with `problem_key` and `answer_key` columns.

    GSM8K: `problem_key="question"`, `answer_key="answer"` (the reference's `#### n` is used).
    MATH / MATH-500: `problem_key="problem"`, `answer_key="answer"` (or `"solution"`, boxed).
    """

    name = "math"
    max_reward = 1.0

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        problem_key: str = "problem",
        answer_key: str = "answer",
        solution_key: str | None = "solution",
        answer_format: AnswerFormat = "boxed",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if answer_format not in ("boxed", "any"):
            raise ValueError(f"answer_format: {answer_format!r} is not 'boxed' or 'any'")
        if not 0 < timeout_s <= 60:
            raise ValueError(f"timeout_s: {timeout_s!r} must be in (0, 60] seconds")
        self.timeout_s = float(timeout_s)
        self.path = Path(path) if path is not None else None
        self.problem_key, self.answer_key = problem_key, answer_key
        self.solution_key = solution_key
        self.answer_format: AnswerFormat = answer_format

    def load(self, path: str | Path) -> list[dict]:
        """Rows of a .jsonl/.json/.parquet file, each with `problem` and `answer` added."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"math data file {path} does not exist")
        try:
            rows = _read_rows(path)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
        except RecursionError:
            raise ValueError(f"{path}: JSON nested too deep") from None
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
            for key in (self.problem_key, self.answer_key):
                if row.get(key) in (None, ""):
                    raise ValueError(
                        f"{path}: row {i}: missing field {key!r} (columns: {sorted(row)}); "
                        "set problem_key/answer_key to this file's columns"
                    )
            out.append(
                {
                    **row,
                    "problem": str(row[self.problem_key]),
                    "answer": reference_answer(row[self.answer_key]),
                }
            )
        return out

    def samples(
        self, split: str = "train", n: int | None = None, seed: int = 0, **kw: Any
    ) -> list[dict]:
        """The rows of `path` (all in file order, or a seeded choice of n); the file is the split."""
        path = kw.pop("path", None) or self.path
        if kw:
            raise ValueError(f"math samples: unknown options {sorted(kw)}")
        if path is None:
            raise ValueError("math task: give a data file (get_task('math', path=...))")
        rows = self.load(path)
        if n is not None and n < len(rows):
            keep = sorted(random.Random(seed).sample(range(len(rows)), n))
            rows = [rows[i] for i in keep]
        return rows

    def prompt(self, sample: Mapping, *, chat: bool = False, tokenizer: Any = None) -> str:
        problem = str(sample.get("problem", sample.get(self.problem_key, "")))
        if chat:
            return chat_prompt(None, f"{problem}\n{INSTRUCTION}", tokenizer=tokenizer)
        return f"Question: {problem}\nAnswer:"

    def target(self, sample: Mapping) -> str:
        """The worked reference solution if the row has one that ends in a final answer."""
        for key in (self.solution_key, self.answer_key):
            text = sample.get(key) if key else None
            if isinstance(text, str) and extract_answer(text) is not None:
                return " " + text.strip()
        return f" The answer is $\\boxed{{{self.gold(sample)}}}$."

    def gold(self, sample: Mapping) -> str:
        ref = sample.get("answer", sample.get(self.answer_key))
        if ref in (None, ""):
            raise ValueError(f"math sample: missing field 'answer' (or {self.answer_key!r})")
        return reference_answer(ref)

    def reward(self, response: str, sample: Mapping) -> float:
        """1.0 if the final answer equals the reference (math-verify), else 0.0."""
        pred = extract_answer(response)
        if pred is None and self.answer_format == "any":
            pred = response[-ANY_TAIL_CHARS:]
        if not pred or len(pred) > (
            MAX_ANSWER_CHARS if self.answer_format == "boxed" else ANY_TAIL_CHARS
        ):
            return 0.0
        return 1.0 if verify_answer(pred, self.gold(sample), timeout_s=self.timeout_s) else 0.0

    def difficulty(self, sample: Mapping) -> int | str:
        """MATH's `level` ("Level 3" -> 3) or a `difficulty` column, else "all"."""
        level = sample.get("level", sample.get("difficulty"))
        if level is None:
            return "all"
        text = str(level).removeprefix("Level").strip()
        return int(text) if text.isdigit() else text
