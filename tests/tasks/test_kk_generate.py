"""K&K generator and renderer: determinism, uniqueness, limits, splits, published-style text."""

from __future__ import annotations

import glob
import random
import re

import pytest

from pmalopti.tasks.kk import generate_records, iter_puzzles, load_puzzles
from pmalopti.tasks.kk.parse import LEAVES, depth, parse_statements
from pmalopti.tasks.kk.render import NAMES, render_claim, render_quiz
from pmalopti.tasks.kk.solve import solve

KK_FILES = sorted(glob.glob("/work/shared/data/kk/*.parquet"))


def _nodes(tree):
    yield tree
    if tree[0] not in LEAVES:
        for sub in tree[1:]:
            yield from _nodes(sub)


def test_generation_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = generate_records(30, people=3, people_max=6, seed=5)
    assert a == generate_records(30, people=3, people_max=6, seed=5)
    assert a != generate_records(30, people=3, people_max=6, seed=6)


def test_every_generated_puzzle_has_exactly_its_recorded_solution_and_no_repeats():
    recs = generate_records(200, people=2, people_max=8, seed=0)
    assert len({r["statements"] for r in recs}) == 200
    assert {len(r["names"]) for r in recs} == set(range(2, 9))
    for r in recs:
        assert solve(r["statements"]) == [tuple(r["solution"])]


def test_nobody_says_i_am_a_knave_in_either_form():
    for p in iter_puzzles(300, people=2, people_max=6, seed=2, depth=3, width=3):
        for i, tree in enumerate(p["statements"]):
            for node in _nodes(tree):
                assert node != ("lying", i)
                assert node != ("not", ("telling-truth", i))


@pytest.mark.parametrize(("d", "w"), [(2, 2), (2, 4), (3, 3)])
def test_depth_and_width_limits_hold_and_operands_are_distinct(d, w):
    for p in iter_puzzles(100, people=3, people_max=5, depth=d, width=w, seed=1):
        for tree in p["statements"]:
            assert depth(tree) <= d
            for node in _nodes(tree):
                if node[0] in ("and", "or"):
                    assert 2 <= len(node) - 1 <= w
                    assert len(set(node[1:])) == len(node) - 1


def test_train_and_test_puzzles_never_coincide_even_with_the_same_seed():
    train = {r["statements"] for r in generate_records(400, people=3, seed=0)}
    test = {r["statements"] for r in generate_records(100, people=3, seed=0, split="test")}
    assert not train & test


def test_asking_for_more_unique_puzzles_than_exist_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot produce 5000 unique train puzzles of 2\.\.2"):
        list(iter_puzzles(5000, people=2, max_tries=500))


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"people": 1}, "people"),
        ({"people": 9}, "people"),
        ({"people": 5, "people_max": 4}, "people"),
        ({"depth": 4}, "depth"),
        ({"depth": 1}, "depth"),
        ({"width": 1}, "width"),
        ({"split": "dev"}, "split"),
    ],
)
def test_out_of_range_options_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        list(iter_puzzles(1, **kw))


def test_quiz_names_everyone_and_uses_several_templates_and_our_own_names():
    recs = generate_records(50, people=4, seed=3)
    starts = set()
    for r in recs:
        assert all(n in NAMES for n in r["names"])
        assert f"You meet 4 inhabitants: {r['names'][0]}, " in r["quiz"]
        assert r["quiz"].endswith("So who is a knight and who is a knave?")
        starts |= set(
            re.findall(
                r"(said that|told you that|insisted|claimed|declared|remarked|According to|words|announced)",
                r["quiz"],
            )
        )
    assert len(starts) >= 6


@pytest.mark.skipif(not KK_FILES, reason="published K&K data not found")
def test_claims_render_exactly_as_in_every_published_quiz():
    for f in KK_FILES:
        for r in load_puzzles(f):
            for tree in parse_statements(r["statements"]):
                claim = render_claim(tree, r["names"])
                assert claim in r["quiz"] or claim[0].upper() + claim[1:] in r["quiz"]


def test_deeper_claims_are_bracketed_so_they_read_unambiguously():
    tree = ("and", ("telling-truth", 0), ("or", ("lying", 1), ("not", ("lying", 0))))
    assert render_claim(tree, ["Ada", "Bruno"]) == (
        "Ada is a knight and (Bruno is a knave or Ada is not a knave)"
    )
    quiz = render_quiz([("lying", 1), ("telling-truth", 0)], ["Ada", "Bruno"], random.Random(0))
    assert "Bruno is a knave" in quiz and "Ada is a knight" in quiz
