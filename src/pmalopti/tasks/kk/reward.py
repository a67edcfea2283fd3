"""The Knights and Knaves reward of Logic-RL and the paper (arXiv 2505.12929, Sec. 5.1).

On the response text *including* the `<think>` that the prompt pre-fills:
- format: +1 if `<think>`, `</think>`, `<answer>`, `</answer>` each occur exactly once and in that
  order, else -1;
- answer, from the last `<answer>...</answer>`: -2 if the format failed or the answer cannot be
  parsed (the number of "knight" + "knave" occurrences must equal the number of people, and each
  name must appear as `\\bName\\b\\s+is\\s+a\\s+(knight|knave)`, case-insensitive), +2 if every role
  matches, -1.5 otherwise.
Totals: 3 (correct), -0.5 (parsed but wrong), -1 (unparsable answer), -3 (bad format).

Only `str.count`/`str.find` scan the whole response; the one regular expression runs on the
answer block, starts at a literal name and has no nested quantifiers, so it is linear.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

TAGS = ("<think>", "</think>", "<answer>", "</answer>")

FORMAT_OK, FORMAT_BAD = 1.0, -1.0
ANSWER_CORRECT, ANSWER_WRONG, ANSWER_UNPARSABLE = 2.0, -1.5, -2.0
MAX_SCORE = FORMAT_OK + ANSWER_CORRECT


def format_ok(text: str) -> bool:
    """Each tag exactly once, in the order think, /think, answer, /answer."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    positions = [text.find(tag) for tag in TAGS]
    return positions == sorted(positions)


def extract_answer(text: str) -> str | None:
    """The stripped content of the last `<answer>...</answer>` block, or None."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>") : end].strip()


@lru_cache(maxsize=4096)
def _role_pattern(name: str) -> re.Pattern[str]:
    # Possessive `\s++` (Python 3.11+) matches exactly what `\s+` does here (each is followed by a
    # letter), but never gives whitespace back, so a long run of spaces is scanned once.
    return re.compile(rf"\b{re.escape(name)}\b\s++is\s++a\s++(knight|knave)", re.IGNORECASE)


def parse_answer(answer: str, names: Sequence[str]) -> dict[str, bool] | None:
    """{name: is_knight} from an answer block, or None when it cannot be parsed (Logic-RL rules)."""
    lower = answer.lower()
    if lower.count("knight") + lower.count("knave") != len(names):
        return None
    roles: dict[str, bool] = {}
    for name in names:
        m = _role_pattern(name).search(answer)
        if m is None:
            return None
        roles[name] = m.group(1).lower() == "knight"
    return roles


def kk_score(
    response: str,
    names: Sequence[str],
    solution: Sequence[bool],
    *,
    think_prefilled: bool = True,
) -> tuple[float, dict[str, float]]:
    """(total reward, {"format": ..., "answer": ...}) of `response` (the text after the prompt).

    With `think_prefilled` the prompt ended in `<think>`, so it is counted as part of the response.
    """
    text = "<think>" + response if think_prefilled else response
    fmt_ok = format_ok(text)
    fmt = FORMAT_OK if fmt_ok else FORMAT_BAD
    ans = ANSWER_UNPARSABLE
    answer = extract_answer(text) if fmt_ok else None
    if answer:
        roles = parse_answer(answer, names)
        if roles is not None:
            truth = dict(zip(names, (bool(s) for s in solution), strict=True))
            ans = ANSWER_CORRECT if roles == truth else ANSWER_WRONG
    return fmt + ans, {"format": fmt, "answer": ans}


def kk_reward(
    response: str, names: Sequence[str], solution: Sequence[bool], *, think_prefilled: bool = True
) -> float:
    """The total reward: 3, -0.5, -1 or -3.

    >>> kk_reward(" ok </think><answer>(1) Ada is a knave</answer>", ["Ada"], [False])
    3.0
    """
    return kk_score(response, names, solution, think_prefilled=think_prefilled)[0]
