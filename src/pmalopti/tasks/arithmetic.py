"""Multi-digit addition (and optionally subtraction): a task a tiny CPU model learns in minutes.

Prompt "12+35=", reference response "47"; the model should then emit its eos token, which the
trainer strips. Reward is exact match: 1.0 when the response (trailing eos text and whitespace
removed) is exactly the answer, else 0.0. Train and test never share a problem: a problem's split
is a fixed function of its text (a CRC32 hash), so any seed draws from disjoint pools.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from typing import Any

from pmalopti.tasks.base import Task, chat_prompt, register_task

EOS_TEXT = "<|endoftext|>"
_SPLITS = ("train", "test")


def problem_split(a: int, b: int, op: str, test_percent: int) -> str:
    """ "test" for a fixed `test_percent`% of all problems, "train" for the rest."""
    return "test" if zlib.crc32(f"{a}{op}{b}".encode()) % 100 < test_percent else "train"


def _answer(a: int, b: int, op: str) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    raise ValueError(f"op: {op!r} is not supported; use '+' or '-'")


def _n_digits(x: int) -> int:
    return len(str(abs(x)))


@register_task("arithmetic")
class ArithmeticTask(Task):
    """`a op b =` with operands of `min_digits`..`max_digits` digits; difficulty = digits.

    `ops` is a string of operators drawn uniformly ("+" or "+-"); subtraction keeps a >= b so
    answers are never negative. `reverse` writes the answer least-significant digit first
    ("12+39=" -> "15"), the order in which carries are computed, which small transformers learn
    much faster (Lee et al. 2023, "Teaching Arithmetic to Small Transformers").
    """

    name = "arithmetic"
    max_reward = 1.0

    def __init__(
        self,
        min_digits: int = 1,
        max_digits: int = 3,
        ops: str = "+",
        test_percent: int = 10,
        reverse: bool = False,
    ) -> None:
        if not 1 <= min_digits <= max_digits <= 18:
            raise ValueError(
                f"min_digits/max_digits: need 1 <= min_digits <= max_digits <= 18, "
                f"got {min_digits}, {max_digits}"
            )
        if not ops or any(o not in "+-" for o in ops):
            raise ValueError(f"ops: {ops!r} must be a non-empty string of '+' and '-'")
        if not 1 <= test_percent <= 50:
            raise ValueError(f"test_percent: {test_percent} is not in 1..50")
        self.min_digits, self.max_digits, self.ops = min_digits, max_digits, ops
        self.test_percent = test_percent
        self.reverse = reverse

    def _draw(self, rng: random.Random) -> tuple[int, int, str]:
        d = rng.randint(self.min_digits, self.max_digits)
        lo = 0 if d == 1 else 10 ** (d - 1)
        a = rng.randint(lo, 10**d - 1)
        e = rng.randint(1, d)  # the other operand has at most d digits
        b = rng.randint(0 if e == 1 else 10 ** (e - 1), 10**e - 1)
        if rng.random() < 0.5:
            a, b = b, a
        op = rng.choice(self.ops)
        if op == "-" and a < b:
            a, b = b, a
        return a, b, op

    def samples(
        self,
        split: str = "train",
        n: int | None = None,
        seed: int = 0,
        *,
        unique: bool | None = None,
        **kw: Any,
    ) -> list[dict]:
        """`n` problems (default 1000) of `split`; `unique` (default: only for "test") forbids
        repeats, and raises ValueError when the pool of that split is too small."""
        if split not in _SPLITS:
            raise ValueError(f"split: {split!r} is not one of {_SPLITS}")
        if kw:
            raise ValueError(f"arithmetic samples: unknown options {sorted(kw)}")
        n = 1000 if n is None else n
        if n < 0:
            raise ValueError(f"n: {n} is negative")
        unique = split == "test" if unique is None else unique
        # Seeds of the two splits are decoupled so "train" seed 0 and "test" seed 0 differ.
        rng = random.Random(f"arithmetic/{split}/{seed}")
        out: list[dict] = []
        seen: set[tuple[int, int, str]] = set()
        misses = 0
        while len(out) < n:
            a, b, op = self._draw(rng)
            key = (a, b, op)
            if problem_split(a, b, op, self.test_percent) != split or (unique and key in seen):
                misses += 1
                if misses > 1000 + 200 * n:
                    raise ValueError(
                        f"n: cannot draw {n} unique {split} problems with digits "
                        f"{self.min_digits}..{self.max_digits} (got {len(out)})"
                    )
                continue
            seen.add(key)
            out.append(self.make_sample(a, b, op))
        return out

    @staticmethod
    def make_sample(a: int, b: int, op: str = "+") -> dict:
        return {
            "a": a,
            "b": b,
            "op": op,
            "answer": str(_answer(a, b, op)),
            "digits": max(_n_digits(a), _n_digits(b)),
        }

    @staticmethod
    def answer(sample: Mapping) -> str:
        if "a" in sample and "b" in sample:
            return str(_answer(int(sample["a"]), int(sample["b"]), str(sample.get("op", "+"))))
        if "answer" in sample:
            return str(sample["answer"]).strip()
        raise ValueError("arithmetic sample: needs fields 'a' and 'b' (or 'answer')")

    def prompt(self, sample: Mapping, *, chat: bool = False, tokenizer: Any = None) -> str:
        expr = f"{int(sample['a'])}{sample.get('op', '+')}{int(sample['b'])}"
        if not chat:
            return f"{expr}="
        return chat_prompt(
            None, f"Compute {expr}. Reply with the number only.", tokenizer=tokenizer
        )

    def expected(self, sample: Mapping) -> str:
        """The response that scores 1: the answer, digits reversed when `reverse`."""
        ans = self.answer(sample)
        return ans[::-1] if self.reverse else ans

    def target(self, sample: Mapping) -> str:
        return self.expected(sample)

    def reward(self, response: str, sample: Mapping) -> float:
        text = response.strip()
        if text.endswith(EOS_TEXT):
            text = text[: -len(EOS_TEXT)].strip()
        return 1.0 if text == self.expected(sample) else 0.0

    def difficulty(self, sample: Mapping) -> int:
        if "digits" in sample:
            return int(sample["digits"])
        return max(_n_digits(int(sample["a"])), _n_digits(int(sample["b"])))
