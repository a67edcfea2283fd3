"""Generated blocks inside markdown: `<!-- gen:KIND ARGS -->` ... `<!-- /gen -->`.

Everything between the two markers is replaced by `render(KIND, ARGS)`; the rest of the page is
written by hand. A page is up to date when filling its blocks leaves it unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

BLOCK = re.compile(r"(<!-- gen:(?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /gen -->)", re.S)


def fill(text: str, render: Callable[[str, list[str]], str]) -> str:
    """`text` with every generated block re-rendered."""

    def one(m: re.Match) -> str:
        kind, *args = m.group("spec").split()
        body = render(kind, args).rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(one, text)


def stale_blocks(text: str, render: Callable[[str, list[str]], str]) -> list[str]:
    """The specs of the blocks of `text` whose content differs from what `render` gives now."""
    out = []
    for m in BLOCK.finditer(text):
        kind, *args = m.group("spec").split()
        if m.group("body") != render(kind, args).rstrip("\n") + "\n":
            out.append(m.group("spec"))
    return out
