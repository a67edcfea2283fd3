"""The Knights and Knaves reward of Logic-RL and the paper (arXiv 2505.12929, Sec. 5.1).

On the response text *including* the `<think>` that the prompt pre-fills:
- format: +1 if `<think>`, `</think>`, `<answer>`, `</answer>` each occur exactly once and in that
  order, else -1;
- answer, from the last `<answer>...</answer>`: -2 if the format failed or the answer cannot be
  parsed (the number of "knight" + "knave" occurrences must equal the number of people, and each
  name must appear as `\\bName\\b\\s+is\\s+a\\s+(knight|knave)`, case-insensitive), +2 if every role
  matches, -1.5 otherwise.
Totals: 3 (correct), -0.5 (parsed but wrong), -1 (unparsable answer), -3 (bad format).

Only `str.count`/`str.find` scan the whole response. The role pattern is then matched backwards
from each of the few role words (as many as people) with possessive quantifiers, and each name is
compared where it would have to end, so scoring is linear and fast on any text. `role_pattern`
keeps the plain form, which the tests use as the reference.
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
def role_pattern(name: str) -> re.Pattern[str]:
    """The Logic-RL pattern for one name (the reference `parse_answer` must agree with)."""
    # Possessive `\s++` (Python 3.11+) matches exactly what `\s+` does here (each is followed by
    # a letter), but never gives whitespace back, so a long run of spaces is scanned once.
    return re.compile(rf"\b{re.escape(name)}\b\s++is\s++a\s++(knight|knave)", re.IGNORECASE)


# The role pattern's middle, " is a ", spelt backwards: matched at a role word's start on the
# reversed text, it finds where the name must end without scanning the rest of the answer.
_REVERSED_IS_A = re.compile(r"\s++a\s++si\s++", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _name_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(name)}\b", re.IGNORECASE)


def _role_words(answer: str, lower: str) -> list[tuple[int, bool]]:
    """(start, is_knight) of every "knight"/"knave", case-insensitive, in text order."""
    if len(lower) != len(answer):  # lower() changed the length (rare letters): use the regex
        return [
            (m.start(), m.group().lower() == "knight")
            for m in re.finditer(r"knight|knave", answer, re.IGNORECASE)
        ]
    found = []
    for word in ("knight", "knave"):
        at = lower.find(word)
        while at >= 0:
            found.append((at, word == "knight"))
            at = lower.find(word, at + len(word))
    return sorted(found)


def _name_ends(answer: str, words: list[tuple[int, bool]]) -> list[tuple[int, bool]]:
    r"""(q, is_knight) for each role word preceded by `\s+is\s+a\s+`, q where that starts."""
    ends = []
    for r, knight in words:
        m = _REVERSED_IS_A.match(answer[r - 1 :: -1]) if r > 0 else None
        if m is not None:
            ends.append((r - m.end(), knight))
    return ends


def _search_role(answer: str, name: str, ends: list[tuple[int, bool]]) -> bool | None:
    """Like `role_pattern(name).search(answer)`: the role of the leftmost match, or None.

    A match is the name ending at one of `ends`. `match(answer, s, q)` sees the character before
    `s` for the leading `\b`; the trailing one holds at `q` exactly when it would in the full text,
    since `answer[q]` is whitespace.
    """
    pattern = _name_pattern(name)
    best: tuple[int, bool] | None = None
    for q, knight in ends:
        s = q - len(name)
        if s >= 0 and pattern.match(answer, s, q) and (best is None or s < best[0]):
            best = (s, knight)
    return None if best is None else best[1]


def parse_answer(answer: str, names: Sequence[str]) -> dict[str, bool] | None:
    """{name: is_knight} from an answer block, or None when it cannot be parsed (Logic-RL rules)."""
    lower = answer.lower()
    if lower.count("knight") + lower.count("knave") != len(names):
        return None
    words = _role_words(answer, lower)
    if len(words) > 2 * len(names) + 8:  # exotic case folding: fall back to the plain search
        matches = (role_pattern(name).search(answer) for name in names)
        roles = [None if m is None else m.group(1).lower() == "knight" for m in matches]
    else:
        ends = _name_ends(answer, words)
        roles = [_search_role(answer, name, ends) for name in names]
    if any(r is None for r in roles):
        return None
    return dict(zip(names, roles, strict=True))


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
