"""Statement trees of Knights and Knaves puzzles, and a parser for their Python-literal text.

A tree is a nested tuple, as in the published data's `statements` column:
`('telling-truth', i)` / `('lying', i)` (person i is a knight / knave, 0-based),
`('not', s)`, `('and', s1, s2, ...)`, `('or', s1, s2, ...)`, `('->', a, b)`, `('<=>', a, b)`.
The parser is a small hand-written tokenizer plus recursive descent: no `eval`, input size and
nesting depth bounded, every error names the character offset.
"""

from __future__ import annotations

from typing import Any, TypeAlias

Tree: TypeAlias = tuple[Any, ...]

LEAVES = ("telling-truth", "lying")
NARY = ("and", "or")
BINARY = ("->", "<=>")
OPS = (*LEAVES, "not", *NARY, *BINARY)

MAX_TEXT = 100_000
"""Longest statements text accepted (the published data's longest is a few hundred chars)."""
MAX_DEPTH = 32
"""Deepest nesting accepted, so hostile input cannot exhaust the recursion limit."""


class StatementError(ValueError):
    """A statements text or tree that is not a valid puzzle description."""


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    """(kind, value, offset) tokens: '(' ')' ',' str int."""
    tokens: list[tuple[str, Any, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c in "(),":
            tokens.append((c, c, i))
            i += 1
        elif c in "'\"":
            end = text.find(c, i + 1)
            if end < 0:
                raise StatementError(f"unterminated string starting at offset {i}")
            value = text[i + 1 : end]
            if "\\" in value:
                raise StatementError(f"escape sequences are not allowed (string at offset {i})")
            tokens.append(("str", value, i))
            i = end + 1
        elif c.isdigit() or (c == "-" and i + 1 < n and text[i + 1].isdigit()):
            j = i + 1
            while j < n and text[j].isdigit():
                j += 1
            if j - i > 6:
                raise StatementError(f"number too long at offset {i}")
            tokens.append(("int", int(text[i:j]), i))
            i = j
        else:
            raise StatementError(f"unexpected character {c!r} at offset {i}")
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.end = len(text)

    def peek(self) -> tuple[str, Any, int]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", None, self.end)

    def take(self, kind: str) -> Any:
        tok = self.peek()
        if tok[0] != kind:
            what = "end of text" if tok[0] == "end" else repr(tok[1])
            raise StatementError(f"expected {kind!r} at offset {tok[2]}, found {what}")
        self.pos += 1
        return tok[1]

    def node(self, depth: int) -> Tree:
        if depth > MAX_DEPTH:
            raise StatementError(
                f"statement nested deeper than {MAX_DEPTH} at offset {self.peek()[2]}"
            )
        self.take("(")
        at = self.peek()[2]
        op = self.take("str")
        if op not in OPS:
            raise StatementError(f"unknown operator {op!r} at offset {at}; expected one of {OPS}")
        args: list[Any] = []
        while self.peek()[0] == ",":
            self.take(",")
            kind = self.peek()[0]
            if kind == ")":  # trailing comma, as in a Python 1-tuple
                break
            args.append(self.take("int") if op in LEAVES else self.node(depth + 1))
        self.take(")")
        arity = {"not": (1, 1), "->": (2, 2), "<=>": (2, 2)}.get(
            op, (1, 1) if op in LEAVES else (2, 64)
        )
        if not arity[0] <= len(args) <= arity[1]:
            raise StatementError(f"{op!r} at offset {at} has {len(args)} operands")
        return (op, *args)

    def top(self) -> tuple[Tree, ...]:
        self.take("(")
        out: list[Tree] = []
        while self.peek()[0] == "(":
            out.append(self.node(1))
            if self.peek()[0] != ",":
                break
            self.take(",")
        self.take(")")
        if self.pos != len(self.tokens):
            raise StatementError(f"unexpected text after the statements at offset {self.peek()[2]}")
        return tuple(out)


def parse_statements(text: str, n_people: int | None = None) -> tuple[Tree, ...]:
    """Parse the `statements` text (a tuple of one tree per person) without evaluating it.

    >>> parse_statements("(('not', ('telling-truth', 1)), ('lying', 0))")
    (('not', ('telling-truth', 1)), ('lying', 0))
    """
    if not isinstance(text, str):
        raise StatementError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise StatementError(f"text is {len(text)} characters, more than {MAX_TEXT}")
    trees = _Parser(text).top()
    if n_people is not None:
        validate_statements(trees, n_people)
    return trees


def validate_statements(trees: Any, n_people: int) -> None:
    """Check a tree tuple is well formed and refers only to people 0..n_people-1."""
    if not isinstance(trees, tuple | list) or len(trees) != n_people:
        got = len(trees) if isinstance(trees, tuple | list) else type(trees).__name__
        raise StatementError(f"expected {n_people} statements (one per person), got {got}")
    for k, tree in enumerate(trees):
        _check(tree, n_people, f"statement {k}", 0)


def _check(tree: Any, n: int, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise StatementError(f"{where}: nested deeper than {MAX_DEPTH}")
    if not isinstance(tree, tuple | list) or not tree or tree[0] not in OPS:
        raise StatementError(f"{where}: {tree!r:.60} is not an operator node")
    op, args = tree[0], tree[1:]
    if op in LEAVES:
        if len(args) != 1 or not isinstance(args[0], int) or isinstance(args[0], bool):
            raise StatementError(f"{where}: leaf {tree!r} needs one person index")
        if not 0 <= args[0] < n:
            raise StatementError(f"{where}: person {args[0]} is out of range 0..{n - 1}")
        return
    want = {"not": 1, "->": 2, "<=>": 2}.get(op)
    if (want is not None and len(args) != want) or (want is None and len(args) < 2):
        raise StatementError(f"{where}: {op!r} has {len(args)} operands")
    for a in args:
        _check(a, n, where, depth + 1)


def format_statements(trees: tuple[Tree, ...]) -> str:
    """The published text form: Python's tuple repr (parse_statements inverts it)."""
    return repr(tuple(_as_tuple(t) for t in trees))


def _as_tuple(tree: Any) -> Any:
    if isinstance(tree, tuple | list):
        return tuple(_as_tuple(x) for x in tree)
    return tree


def depth(tree: Tree) -> int:
    """1 for a leaf, 1 + the deepest operand otherwise."""
    if tree[0] in LEAVES:
        return 1
    return 1 + max(depth(a) for a in tree[1:])
