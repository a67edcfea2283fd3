"""The registry of hostile-input cases: `add(id, build, expect)` appends to `CASES`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from hostile_harness import Call, Workspace


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Workspace], Call]
    expect: str = "error"
    match: str = ""
    """for an error: a word its line must contain (the field or option at fault)"""


CASES: list[Case] = []
XFAIL: dict[str, str] = {}
"""case id -> why it still fails: another part of the work (filled in by hostile_cases.py)"""


def case(cid: str, expect: str = "error", match: str = ""):
    def deco(fn: Callable[[Workspace], Call]) -> Callable[[Workspace], Call]:
        assert all(c.id != cid for c in CASES), cid
        CASES.append(Case(cid, fn, expect, match))
        return fn

    return deco


def add(
    cid: str, build: Callable[[Workspace], Call], expect: str = "error", match: str = ""
) -> None:
    case(cid, expect, match)(build)
