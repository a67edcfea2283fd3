"""Seeded generator of Knights and Knaves puzzles with exactly one solution.

Statements follow the published recipe (Xie et al. 2024, used by Logic-RL and arXiv 2505.12929):
a root drawn among leaf / not / and / or / -> / <=> (one chance in six each, a leaf forced at the
depth limit), `and`/`or` with 2..`width` operands, operands distinct. Nobody says "I am a knave"
(neither `('lying', self)` nor `('not', ('telling-truth', self))`): alone it is a paradox no
assignment satisfies, so it only wastes samples. A puzzle is kept when exactly one assignment is
consistent and it was not drawn before. Its split is a fixed function of its statements (CRC32),
so "train" and "test" puzzles never coincide, whatever the seeds.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

from tqdm import tqdm

from pmalopti.tasks.kk.parse import Tree, format_statements
from pmalopti.tasks.kk.render import NAMES, render_quiz
from pmalopti.tasks.kk.solve import unique_solution

MIN_PEOPLE, MAX_PEOPLE = 2, 8
SPLITS = ("train", "test")


def _leaf(rng: random.Random, speaker: int, n: int) -> Tree:
    while True:
        tree = (rng.choice(("telling-truth", "lying")), rng.randrange(n))
        if tree != ("lying", speaker):
            return tree


def sample_statement(rng: random.Random, speaker: int, n: int, depth: int, width: int) -> Tree:
    """One statement tree for `speaker` of depth <= `depth` (a leaf has depth 1)."""
    dice = rng.randrange(6)
    if depth <= 1 or dice == 0:
        return _leaf(rng, speaker, n)
    if dice == 1:
        while True:
            inner = sample_statement(rng, speaker, n, depth - 1, width)
            if inner != ("telling-truth", speaker):
                return ("not", inner)
    op, k = {2: ("and", None), 3: ("or", None), 4: ("->", 2), 5: ("<=>", 2)}[dice]
    k = k or rng.randint(2, width)
    subs: list[Tree] = []
    while len(subs) < k:
        sub = sample_statement(rng, speaker, n, depth - 1, width)
        if sub not in subs:
            subs.append(sub)
    return (op, *subs)


def puzzle_split(statements_text: str, test_percent: int) -> str:
    return "test" if zlib.crc32(statements_text.encode()) % 100 < test_percent else "train"


def _check_range(people: int, people_max: int, depth: int, width: int, test_percent: int) -> None:
    if not MIN_PEOPLE <= people <= people_max <= MAX_PEOPLE:
        raise ValueError(
            f"people: need {MIN_PEOPLE} <= people <= people_max <= {MAX_PEOPLE}, "
            f"got people={people}, people_max={people_max}"
        )
    if not 2 <= depth <= 3:
        # Leaf-only statements are parity constraints that flipping every role preserves,
        # so depth 1 never has a unique solution.
        raise ValueError(f"depth: {depth} is not in 2..3")
    if not 2 <= width <= 4:
        raise ValueError(f"width: {width} is not in 2..4")
    if not 0 <= test_percent <= 50:
        raise ValueError(f"test_percent: {test_percent} is not in 0..50")


def iter_puzzles(
    n: int,
    *,
    people: int = 3,
    people_max: int | None = None,
    seed: int = 0,
    split: str = "train",
    depth: int = 2,
    width: int = 2,
    test_percent: int = 10,
    max_tries: int | None = None,
    progress: bool = False,
) -> Iterator[dict]:
    """Yield `n` distinct puzzles as {"names", "statements" (trees), "solution", "quiz"}.

    The number of people is drawn uniformly from people..people_max (default: people).
    Raises ValueError when `max_tries` draws in a row (default 20,000) produce nothing new,
    i.e. the space of unique puzzles of this size and split is exhausted.
    """
    people_max = people if people_max is None else people_max
    _check_range(people, people_max, depth, width, test_percent)
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n: {n} is negative")
    if split == "test" and test_percent == 0:
        raise ValueError("test_percent: 0 leaves no puzzle in the test split")
    max_tries = 20_000 if max_tries is None else max_tries
    if max_tries < 1:
        raise ValueError(f"max_tries: {max_tries} must be at least 1")
    rng = random.Random(f"kk/{seed}")
    seen: set[str] = set()
    fails = 0
    bar = tqdm(total=n, desc="kk puzzles", unit="puzzle", disable=not progress)
    while len(seen) < n:
        k = rng.randint(people, people_max)
        statements = tuple(sample_statement(rng, i, k, depth, width) for i in range(k))
        key = format_statements(statements)
        solution = None
        if key not in seen and puzzle_split(key, test_percent) == split:
            solution = unique_solution(statements)
        if solution is None:
            fails += 1
            if fails >= max_tries:
                bar.close()
                raise ValueError(
                    f"n: cannot produce {n} unique {split} puzzles of {people}..{people_max} "
                    f"people (depth {depth}, width {width}): only {len(seen)} found before "
                    f"{max_tries} draws in a row gave nothing new"
                )
            continue
        fails = 0
        seen.add(key)
        names = rng.sample(NAMES, k)
        bar.update(1)
        yield {
            "names": names,
            "statements": statements,
            "solution": list(solution),
            "quiz": render_quiz(statements, names, rng),
        }
    bar.close()
