"""Solve Knights and Knaves puzzles by checking all 2^N role assignments at once (numpy).

An assignment is consistent when, for every person i, "i is a knight" equals "statement i is
true" (knights tell the truth, knaves lie). Each statement tree is evaluated over the whole
(2^N, N) assignment matrix in one pass, so a puzzle costs a few dozen vectorised operations.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pmalopti.tasks.kk.parse import Tree, parse_statements, validate_statements

MAX_PEOPLE = 16


@lru_cache(maxsize=MAX_PEOPLE + 1)
def assignments(n: int) -> np.ndarray:
    """All role assignments of n people, (2^n, n) bool, True = knight; row 0 is all knights."""
    if not 1 <= n <= MAX_PEOPLE:
        raise ValueError(f"number of people {n} is not in 1..{MAX_PEOPLE}")
    rows = np.arange(2**n, dtype=np.int64)[:, None]  # (2^n, 1)
    bits = (rows >> np.arange(n - 1, -1, -1)) & 1  # (2^n, n), person 0 is the top bit
    out = bits == 0
    out.setflags(write=False)
    return out


def evaluate(tree: Tree, roles: np.ndarray) -> np.ndarray:
    """Truth of `tree` under every assignment: roles (A, N) bool -> (A,) bool."""
    op = tree[0]
    if op == "telling-truth":
        return roles[:, tree[1]]
    if op == "lying":
        return ~roles[:, tree[1]]
    if op == "not":
        return ~evaluate(tree[1], roles)
    if op == "and":
        out = evaluate(tree[1], roles)
        for sub in tree[2:]:
            out = out & evaluate(sub, roles)
        return out
    if op == "or":
        out = evaluate(tree[1], roles)
        for sub in tree[2:]:
            out = out | evaluate(sub, roles)
        return out
    if op == "->":
        return ~evaluate(tree[1], roles) | evaluate(tree[2], roles)
    if op == "<=>":
        return evaluate(tree[1], roles) == evaluate(tree[2], roles)
    raise ValueError(f"unknown operator {op!r}")


def consistent(statements: tuple[Tree, ...], n: int | None = None) -> np.ndarray:
    """(2^N,) bool: which assignments satisfy "i is a knight <=> statement i" for every i."""
    n = len(statements) if n is None else n
    roles = assignments(n)  # (2^N, N)
    ok = np.ones(len(roles), dtype=bool)  # (2^N,)
    for i, tree in enumerate(statements):
        ok &= roles[:, i] == evaluate(tree, roles)
    return ok


def solve(statements: tuple[Tree, ...] | str, n: int | None = None) -> list[tuple[bool, ...]]:
    """Every consistent assignment (a tuple of bools per person, True = knight).

    `statements` is a tree tuple or the published text form.

    >>> solve("(('telling-truth', 1), ('and', ('lying', 0), ('telling-truth', 1)))")
    [(False, False)]
    """
    if isinstance(statements, str):
        statements = parse_statements(statements)
    n = len(statements) if n is None else n
    validate_statements(statements, n)
    roles = assignments(n)
    return [tuple(bool(x) for x in row) for row in roles[consistent(statements, n)]]


def unique_solution(statements: tuple[Tree, ...] | str) -> tuple[bool, ...] | None:
    """The solution when exactly one assignment is consistent, else None."""
    sols = solve(statements)
    return sols[0] if len(sols) == 1 else None
