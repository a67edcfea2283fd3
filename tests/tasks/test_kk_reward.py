"""The K&K reward (Logic-RL / arXiv 2505.12929): published puzzles, each failure mode, hostile text."""

from __future__ import annotations

import glob
import re
import time

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmalopti.tasks import get_task
from pmalopti.tasks.kk.reward import (
    _name_ends,
    _role_words,
    _search_role,
    extract_answer,
    format_ok,
    kk_reward,
    kk_score,
    parse_answer,
    role_pattern,
)

KK_FILES = sorted(glob.glob("/work/shared/data/kk/*.parquet"))
NAMES = ["Ada", "Bruno", "Clara"]
SOLUTION = [True, False, True]
GOOD = "(1) Ada is a knight\n(2) Bruno is a knave\n(3) Clara is a knight"


def wrap(answer: str, think: str = " reasoning ") -> str:
    """A response after a prompt that pre-filled <think>."""
    return f"{think}</think>\n<answer>{answer}</answer>"


@pytest.fixture(scope="module")
def published() -> list[dict]:
    if not KK_FILES:
        pytest.skip("published K&K data not found")
    return [r for f in KK_FILES for r in pq.read_table(f).to_pylist()]


def test_the_published_solution_in_tags_scores_3_for_every_published_puzzle(published):
    for r in published:
        assert kk_reward(wrap(r["solution_text_format"]), r["names"], r["solution"]) == 3.0


def test_one_flipped_role_scores_minus_half_for_every_published_puzzle(published):
    for k, r in enumerate(published):
        i = k % len(r["names"])
        lines = r["solution_text_format"].split("\n")
        lines[i] = (
            lines[i].replace("knight", "knave")
            if r["solution"][i]
            else lines[i].replace("knave", "knight")
        )
        assert kk_reward(wrap("\n".join(lines)), r["names"], r["solution"]) == -0.5


def test_a_missing_think_close_tag_scores_minus_3_for_every_published_puzzle(published):
    for r in published:
        response = f" reasoning\n<answer>{r['solution_text_format']}</answer>"
        assert kk_reward(response, r["names"], r["solution"]) == -3.0


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (wrap(GOOD), 3.0),
        (wrap(GOOD) + "\nextra text after the answer", 3.0),
        (wrap(GOOD.upper()), 3.0),  # names and roles match case-insensitively
        (wrap("Ada is a knight, Bruno is a knave, Clara is a knight"), 3.0),
        (wrap("(1) Ada   is  a\nknight\n(2) Bruno is a knave\n(3) Clara is a knight"), 3.0),
        (wrap(GOOD.replace("(2) Bruno is a knave", "(2) Bruno is a knight")), -0.5),
        (wrap("(1) Ada is a knight\n(3) Clara is a knight"), -1.0),  # a person missing
        (wrap(GOOD + " (a true knight)"), -1.0),  # an extra "knight" word
        (wrap(GOOD.replace("Bruno is a knave", "Bruno is knave")), -1.0),  # no "a"
        (wrap(GOOD.replace("Ada", "Adam")), -1.0),  # \bAda\b does not match inside "Adam"
        (wrap(""), -1.0),  # empty answer block
        (wrap(GOOD) + "<answer>" + GOOD + "</answer>", -3.0),  # doubled answer block
        (f" r <answer>{GOOD}</answer></think>", -3.0),  # tags out of order
        (f"</think> r <answer>{GOOD}</answer>".replace("</think> r", " r</think>"), 3.0),
        (wrap(GOOD).replace("<answer>", "<Answer>").replace("</answer>", "</Answer>"), -3.0),
        ("<think>" + wrap(GOOD), -3.0),  # a second <think> after the pre-filled one
        (wrap(GOOD).replace("</answer>", ""), -3.0),
        ("", -3.0),
    ],
)
def test_each_failure_mode_gets_its_logic_rl_score(response, expected):
    assert kk_reward(response, NAMES, SOLUTION) == expected


def test_without_prefill_the_response_must_open_think_itself():
    assert kk_reward(wrap(GOOD), NAMES, SOLUTION, think_prefilled=False) == -3.0
    assert kk_reward("<think>" + wrap(GOOD), NAMES, SOLUTION, think_prefilled=False) == 3.0
    task = get_task("kk", think_prefilled=False)
    sample = {"names": NAMES, "solution": SOLUTION}
    assert task.reward("<think>" + wrap(GOOD), sample) == 3.0


def test_score_splits_the_total_into_format_and_answer_parts():
    assert kk_score(wrap(GOOD), NAMES, SOLUTION) == (3.0, {"format": 1.0, "answer": 2.0})
    wrong = wrap(GOOD.replace("Ada is a knight", "Ada is a knave"))
    assert kk_score(wrong, NAMES, SOLUTION)[1] == {"format": 1.0, "answer": -1.5}
    assert kk_score("junk", NAMES, SOLUTION)[1] == {"format": -1.0, "answer": -2.0}


def test_helpers_agree_with_the_definition():
    assert format_ok("<think></think><answer></answer>")
    assert not format_ok("<think></think></answer><answer>")
    assert extract_answer("<answer>a</answer><answer> b </answer>") == "b"
    assert extract_answer("<answer>a") is None
    assert parse_answer("Ada is a knave. Bruno is a knight.", ["Ada", "Bruno"]) == {
        "Ada": False,
        "Bruno": True,
    }
    assert parse_answer("Ada is a knave.", ["Ada", "Bruno"]) is None


def test_reward_accepts_a_verl_ground_truth_instead_of_names_and_solution():
    task = get_task("kk")
    sample = {"reward_model": {"ground_truth": {"solution_text_format": GOOD}}}
    assert task.reward(wrap(GOOD), sample) == 3.0
    assert task.difficulty(sample) == 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_any_string_gets_one_of_the_four_scores_without_raising(text):
    assert kk_reward(text, NAMES, SOLUTION) in (3.0, -0.5, -1.0, -3.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "<think>",
                "</think>",
                "<answer>",
                "</answer>",
                " Ada",
                " is a",
                " knight",
                " knave",
                " Bruno",
                " Clara",
                "\n",
                "(1)",
                " is",
                " a ",
                "KNIGHT",
            ]
        ),
        max_size=40,
    )
)
def test_tag_soup_never_raises_and_scores_3_only_when_correct(parts):
    text = "".join(parts)
    score = kk_reward(text, NAMES, SOLUTION)
    assert score in (3.0, -0.5, -1.0, -3.0)
    if score == 3.0:
        assert parse_answer(extract_answer("<think>" + text), NAMES) == dict(
            zip(NAMES, SOLUTION, strict=True)
        )


def _logic_rl_parse(answer, names):
    """Logic-RL's parse_model_answer, verbatim in behaviour: the reference for `parse_answer`."""
    if answer.lower().count("knight") + answer.lower().count("knave") != len(names):
        return None
    roles = {}
    for name in names:
        m = re.search(rf"\b{re.escape(name)}\b\s+is\s+a\s+(knight|knave)", answer, re.IGNORECASE)
        if m is None:
            return None
        roles[name] = m.group(1).lower() == "knight"
    return roles


NAME_SETS = [["Ada", "Bruno", "Clara"], ["Jo.", "Zoë", "Mary Ann"]]
# A name ending in "." never matches Logic-RL's `\bName\b\s+` (no boundary between "." and " ").
WORD_NAME_SETS = [["Ada", "Bruno", "Clara"], ["Zoë", "Mary Ann", "Ines"]]
PIECES = [
    "Ada", "ada", "ADA", "Adam", "xAda", "Bruno", "Clara", "Jo.", "jo.", "Zoë", "ZOË", "Mary Ann",
    "Mary  Ann", " ", "  ", "\n", "\t", "is", "IS", "Is", "a", "A", "an", "knight", "Knave",
    "KNIGHT", "knights", "knave", ",", ".", "(1)", "_", "é", " is a ", " is  a\t", "\nIS A ",
    " is an ", "is a ", " is a", " Is a  ",
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(NAME_SETS), st.lists(st.sampled_from(PIECES), max_size=30))
def test_answer_parsing_equals_logic_rl_regex_search_on_random_answers(names, parts):
    text = "".join(parts)
    assert parse_answer(text, names) == _logic_rl_parse(text, names)
    # The backwards search from role words finds what a forward regex search finds, whatever
    # the number of role words.
    ends = _name_ends(text, _role_words(text, text.lower()))
    for name in names:
        m = role_pattern(name).search(text)
        assert _search_role(text, name, ends) == (None if m is None else m[1].lower() == "knight")


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(WORD_NAME_SETS),
    st.permutations([0, 1, 2]),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.sampled_from([" ", "\n", "  \t", ", "]),
)
def test_answer_parsing_equals_logic_rl_on_well_formed_answers(names, order, roles, sep):
    text = sep.join(f"{names[i]} is a {'knight' if roles[i] else 'knave'}" for i in order)
    assert (
        parse_answer(text, names)
        == _logic_rl_parse(text, names)
        == dict(zip(names, roles, strict=True))
    )


HOSTILE = {
    "spaces after a name": wrap("Ada" + " " * 1_000_000 + "knight knave knave"),
    "names without roles": wrap("Ada is a " * 120_000 + "knight knave knave"),
    "many tags": "<answer></answer>" * 60_000,
    "whitespace between is and a": wrap(
        "Ada is" + " \t\n" * 340_000 + "x knight Bruno is a knave Clara is a knight"
    ),
    "plain bytes": "x" * 1_000_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_megabyte_hostile_responses_are_scored_well_under_a_second(name):
    text = HOSTILE[name]
    assert len(text) >= 1_000_000
    seconds = _best_time(lambda: kk_reward(text, NAMES, SOLUTION), reps=2)
    # ~0.05 s measured on a loaded 2-core box; catastrophic backtracking would take minutes, so
    # the bound is loose enough never to flake on a busy machine
    assert seconds < 2.0


def _best_time(fn, reps: int = 5) -> float:
    """The fastest of `reps` runs: robust to a loaded machine, unlike a single timing."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.slow  # compares timings; flaky on an oversubscribed machine
@pytest.mark.parametrize("which", ["parse_answer", "forward regex"])
def test_the_role_matching_is_linear_not_backtracking_catastrophically(which):
    # Near-miss answers (a name, a long run of spaces, "is" but no "a") are the classic trigger
    # of polynomial backtracking in `\s+is\s+a\s+`. Quadrupling the input must cost about 4x
    # (quadratic would be 16x).
    def run(n: int):
        answer = ("Ada " + " " * 50 + "is  " * 3) * n + "Ada is a knight Bruno is a knave"
        answer += " Clara is a knight"
        if which == "parse_answer":
            return lambda: parse_answer(answer, NAMES)
        return lambda: [role_pattern(name).search(answer) for name in NAMES]

    small, big = _best_time(run(1_500), reps=3), _best_time(run(6_000), reps=3)
    assert big < 10 * small + 0.01
