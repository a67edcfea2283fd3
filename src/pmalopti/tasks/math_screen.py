"""Cheap screening of answers that are hostile on their face, before math-verify sees them.

sympy evaluates integer powers and factorials exactly: `10^{10^{10}}`, a power tower `2^2^2^2^2`,
`100000!` or a 10,000-deep bracket nest would take minutes or gigabytes (or recurse too deep).
`screen_answer` finds them in linear time; the reward counts them as wrong. Everything it lets
through still runs under the worker's hard deadline (`pmalopti.tasks.verify_worker`).
"""

from __future__ import annotations

import math
import re

MAX_SCREEN_CHARS = 2000
MAX_NESTING = 40
MAX_EXPONENT = 10_000
"""A numeric exponent above this (10^{10^{10}}, 2^2^2^2^2) makes sympy build a gigantic integer."""
MAX_FACTORIAL_DIGITS = 4
MAX_POWERS = 50

_POW = re.compile(r"\^|\*\*")
_LETTER = re.compile(r"[A-Za-z]")
_NUMBER = re.compile(r"\d+")
_TOWER_CHARS = re.compile(r"[\d\s^*.{}]*")


def _group_end(text: str, i: int) -> int:
    """Index just past the bracket group opening at `i` (or len(text) if it never closes)."""
    open_, close = text[i], "}" if text[i] == "{" else ")"
    depth = 0
    for j in range(i, len(text)):
        depth += (text[j] == open_) - (text[j] == close)
        if depth == 0:
            return j + 1
    return len(text)


def _exponent(text: str, i: int) -> str:
    """The exponent starting at `i` (just after `^`/`**`): a bracket group, a token, or a chain."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] in "{(":
        end = _group_end(text, i)
    else:
        m = re.match(r"-?\d+(?:\.\d+)?|[A-Za-z]|\\[A-Za-z]+", text[i:])
        end = i + (m.end() if m else 0)
    if _POW.match(text[end:].lstrip()):  # an unbraced chain, 10^10^10: take all of it
        end = i + _TOWER_CHARS.match(text, i).end() - i
    return text[i:end]


def _strip_group(exp: str) -> str:
    exp = exp.strip()
    while exp[:1] in ("{", "(") and _group_end(exp, 0) == len(exp):
        exp = exp[1:-1].strip()
    return exp


def _tower_value(exp: str) -> float | None:
    """The value of a numeric power tower (`10^{10}`, `2^2^3`, right-associative), inf when huge;
    None when `exp` is not one."""
    exp = _strip_group(exp)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:(?:\^|\*\*)(.+))?", exp, re.S)
    if not m:
        return None
    base = float(m.group(1))
    if m.group(2) is None:
        return base
    e = _tower_value(m.group(2))
    if e is None:
        return None
    if base > 1 and e > MAX_EXPONENT:
        return math.inf
    try:
        return base**e
    except OverflowError:
        return math.inf


def screen_answer(answer: str) -> str | None:
    """Why `answer` is refused without being parsed, or None when it may go to math-verify.

    >>> screen_answer("10^{10^{10}}")
    'an exponent above 10000'
    >>> screen_answer("e^{x^2}") is None and screen_answer("2^{2^{3}}") is None
    True
    """
    if len(answer) > MAX_SCREEN_CHARS:
        return f"longer than {MAX_SCREEN_CHARS} characters"
    depth = peak = 0
    for ch in answer:
        if ch in "{([":
            depth += 1
            peak = max(peak, depth)
        elif ch in "})]":
            depth -= 1
    if peak > MAX_NESTING:
        return f"nested deeper than {MAX_NESTING}"
    powers = list(_POW.finditer(answer))
    if len(powers) > MAX_POWERS:
        return f"more than {MAX_POWERS} powers"
    for m in powers:
        exp = _exponent(answer, m.end())
        value = _tower_value(exp)
        if value is not None:
            if value > MAX_EXPONENT:
                return f"an exponent above {MAX_EXPONENT}"
        elif _POW.search(exp) and not _LETTER.search(re.sub(r"\\[A-Za-z]+", "", exp)):
            return "a numeric power tower"
        elif any(len(n) > len(str(MAX_EXPONENT)) for n in _NUMBER.findall(exp)):
            return f"an exponent above {MAX_EXPONENT}"
    for m in re.finditer(r"(\d+)\s*!", answer):
        if len(m.group(1)) > MAX_FACTORIAL_DIGITS:
            return f"a factorial of a number of more than {MAX_FACTORIAL_DIGITS} digits"
    if re.search(r"!\s*[)}]*\s*!", answer):
        return "a factorial of a factorial"
    return None
