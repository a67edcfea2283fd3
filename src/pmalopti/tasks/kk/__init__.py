"""Knights and Knaves: the logic-puzzle RL task of Logic-RL and arXiv 2505.12929.

task = get_task("kk", people=3, people_max=7)        # generated puzzles
task = get_task("kk", path="shared/data/kk/5ppl_test.parquet")  # a puzzle file
s = task.samples("train", n=100, seed=0)[0]
task.prompt(s)                  # compact plain prompt ending in "<think>"
task.prompt(s, chat=True)       # the published chat prompt (system text, ChatML, "<think>")
task.reward(response, s)        # 3 / -0.5 / -1 / -3 (see reward.py)
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pmalopti.tasks.base import Task, chat_prompt, register_task
from pmalopti.tasks.kk.generate import iter_puzzles
from pmalopti.tasks.kk.io import (
    PuzzleError,
    check_puzzle,
    load_puzzles,
    parse_solution_text_format,
    puzzle_record,
    write_puzzles,
)
from pmalopti.tasks.kk.parse import Tree, format_statements, parse_statements
from pmalopti.tasks.kk.render import SYSTEM_PROMPT, plain_prompt, render_quiz, target_text
from pmalopti.tasks.kk.reward import MAX_SCORE, kk_reward, kk_score
from pmalopti.tasks.kk.solve import solve, unique_solution

__all__ = [
    "MAX_SCORE",
    "KKTask",
    "PuzzleError",
    "check_puzzle",
    "format_statements",
    "generate_records",
    "iter_puzzles",
    "kk_reward",
    "kk_score",
    "load_puzzles",
    "parse_statements",
    "solve",
    "unique_solution",
    "write_puzzles",
]


def generate_records(n: int, *, split: str = "train", seed: int = 0, **kw: Any) -> list[dict]:
    """`n` generated puzzles as rows in the published layout (see `iter_puzzles` for kw)."""
    return [
        puzzle_record(p["names"], p["statements"], p["solution"], p["quiz"], index=i, split=split)
        for i, p in enumerate(iter_puzzles(n, split=split, seed=seed, **kw))
    ]


@lru_cache(maxsize=65536)
def _trees(text: str) -> tuple[Tree, ...]:
    return parse_statements(text)


def _truth(sample: Mapping) -> tuple[list[str], list[bool]]:
    """Names and roles of a sample: `names` + `solution`, else `solution_text_format`
    (top level or in verl's `reward_model.ground_truth`)."""
    if sample.get("names") is not None and sample.get("solution") is not None:
        return [str(x) for x in sample["names"]], [bool(x) for x in sample["solution"]]
    fmt = sample.get("solution_text_format")
    if fmt is None:
        fmt = ((sample.get("reward_model") or {}).get("ground_truth") or {}).get(
            "solution_text_format"
        )
    if fmt is None:
        raise PuzzleError(
            "kk sample: needs fields 'names' and 'solution' (or 'solution_text_format')"
        )
    return parse_solution_text_format(fmt)


@register_task("kk")
class KKTask(Task):
    """Knights and Knaves puzzles, generated (people..people_max) or read from `path`.

    `think_prefilled` (default True, as the published prompts): prompts end in "<think>", so the
    reward prepends it to the response and `target` starts after it.
    """

    name = "kk"
    max_reward = MAX_SCORE

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        people: int = 3,
        people_max: int | None = 7,
        depth: int = 2,
        width: int = 2,
        test_percent: int = 10,
        think_prefilled: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.gen_kw = {
            "people": people,
            "people_max": people_max,
            "depth": depth,
            "width": width,
            "test_percent": test_percent,
        }
        next(iter_puzzles(0, **self.gen_kw), None)  # validates the options now
        self.think_prefilled = think_prefilled

    def samples(
        self, split: str = "train", n: int | None = None, seed: int = 0, **kw: Any
    ) -> list[dict]:
        """Puzzles of `path` (all, or a seeded choice of n, in file order), else n generated
        puzzles of `split` (default 1000); kw overrides the generator options or gives `path`."""
        path = kw.pop("path", None) or self.path
        if path is not None:
            if kw:
                raise ValueError(f"kk samples: options {sorted(kw)} do not apply to a file")
            rows = load_puzzles(path)
            if n is not None and n < len(rows):
                keep = sorted(random.Random(seed).sample(range(len(rows)), n))
                rows = [rows[i] for i in keep]
            return rows
        gen = {**self.gen_kw, **kw}
        return generate_records(1000 if n is None else n, split=split, seed=seed, **gen)

    def _statements(self, sample: Mapping) -> tuple[Tree, ...]:
        s = sample["statements"]
        return _trees(s) if isinstance(s, str) else _trees(format_statements(s))

    def prompt(self, sample: Mapping, *, chat: bool = False, tokenizer: Any = None) -> str:
        prefill = "<think>" if self.think_prefilled else ""
        names = list(sample["names"])
        if not chat:
            return plain_prompt(self._statements(sample), names, prefill=prefill)
        quiz = sample.get("quiz") or render_quiz(
            self._statements(sample), names, random.Random(str(sample["statements"]))
        )
        return chat_prompt(SYSTEM_PROMPT, quiz, tokenizer=tokenizer, prefill=prefill)

    def target(self, sample: Mapping) -> str:
        names, solution = _truth(sample)
        return target_text(
            self._statements(sample), names, solution, prefilled=self.think_prefilled
        )

    def reward(self, response: str, sample: Mapping) -> float:
        names, solution = _truth(sample)
        return kk_reward(response, names, solution, think_prefilled=self.think_prefilled)

    def score(self, response: str, sample: Mapping) -> tuple[float, dict[str, float]]:
        """The reward with its parts: (total, {"format": ..., "answer": ...})."""
        names, solution = _truth(sample)
        return kk_score(response, names, solution, think_prefilled=self.think_prefilled)

    def difficulty(self, sample: Mapping) -> int:
        return len(_truth(sample)[0])
