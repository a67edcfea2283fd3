"""Math task: answer extraction, math-verify reward on hand-written problems, loaders."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("math_verify")

from pmalopti.tasks import get_task, trl_reward
from pmalopti.tasks.math import extract_answer, last_boxed, reference_answer

# Our own problems, GSM8K-style (worked solution ending in "#### n") and MATH-style (boxed).
# The deadline is tested in tests/tasks/test_math_deadline.py; tests of what counts as equal use a
# generous one, so that a loaded machine (a miss counts as wrong) cannot fail them.
SEMANTICS_TIMEOUT_S = 20.0

GSM = [
    {
        "question": "A baker fills 7 trays with 12 rolls each and sells 30 rolls. How many are left?",
        "answer": "7 * 12 = 84 rolls were baked.\n84 - 30 = 54 remain.\n#### 54",
    },
    {
        "question": "Mia reads 15 pages a day for 6 days, then 20 pages. How many pages in total?",
        "answer": "15 * 6 = 90. 90 + 20 = 110.\n#### 110",
    },
]
MATH = [
    {"problem": "Simplify $\\frac{6}{8}$.", "answer": "\\frac{3}{4}", "level": "Level 1"},
    {
        "problem": "What is $\\sqrt{50}$ in simplest form?",
        "answer": "5\\sqrt{2}",
        "level": "Level 2",
    },
    {
        "problem": "Solve $2x + 3 = 11$ for $x$.",
        "solution": "Subtract 3: $2x = 8$, so $x = \\boxed{4}$.",
        "answer": "4",
        "level": "Level 1",
    },
]


@pytest.fixture
def gsm_file(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GSM))
    return path


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so \\boxed{4}.", "4"),
        ("\\boxed{1} then \\boxed{ {2}+1 }", "{2}+1"),
        ("\\boxed{\\frac{3}{4}} and a truncated \\boxed{5", "\\frac{3}{4}"),
        ("\\fbox{7}", "7"),
        ("\\boxed {9}", "9"),
        ("work\n#### 54\n", "54"),
        ("\\boxed{3}\n#### 4", "4"),  # whichever comes last
        ("#### 4 then \\boxed{3}", "3"),
        ("no answer here", None),
        ("#### \n", None),
    ],
)
def test_the_final_answer_is_the_last_boxed_or_hashes_answer(text, answer):
    assert extract_answer(text) == answer


def test_reference_answers_come_from_hashes_boxes_or_the_text_itself():
    assert reference_answer(GSM[0]["answer"]) == "54"
    assert reference_answer(MATH[2]["solution"]) == "4"
    assert reference_answer(" 5\\sqrt{2} ") == "5\\sqrt{2}"


@pytest.mark.parametrize(
    ("sample", "response", "reward"),
    [
        (MATH[0], "Divide by 2: \\boxed{\\frac{3}{4}}", 1.0),
        (MATH[0], "It is \\boxed{0.75}", 1.0),  # equal value, other form
        (MATH[0], "It is \\boxed{6/8}", 1.0),
        (MATH[0], "It is \\boxed{\\frac{4}{3}}", 0.0),
        (MATH[1], "\\boxed{\\sqrt{50}}", 1.0),
        (MATH[1], "\\boxed{5\\sqrt{3}}", 0.0),
        (MATH[2], "x = 4, so \\boxed{x = 4}", 1.0),
        (MATH[2], "the answer is 4", 0.0),  # no box: wrong format
        ({"answer": GSM[0]["answer"]}, "84 - 30 = 54\n#### 54", 1.0),
        ({"answer": GSM[0]["answer"]}, "#### 54.0", 1.0),
        ({"answer": GSM[0]["answer"]}, "#### 55", 0.0),
        ({"answer": "1000"}, "\\boxed{1,000}", 1.0),
    ],
)
def test_reward_is_one_exactly_when_math_verify_finds_the_answer_equal(sample, response, reward):
    # equality semantics, not the deadline: a generous one, so a loaded machine cannot fail it
    assert get_task("math", timeout_s=SEMANTICS_TIMEOUT_S).reward(response, sample) == reward


def test_answer_format_any_accepts_an_unboxed_final_answer():
    task = get_task("math", answer_format="any", timeout_s=SEMANTICS_TIMEOUT_S)
    assert task.reward("the answer is 4", MATH[2]) == 1.0
    assert task.reward("the answer is 5", MATH[2]) == 0.0
    with pytest.raises(ValueError, match="answer_format"):
        get_task("math", answer_format="latex")


def test_gsm8k_jsonl_loads_with_configured_columns_and_targets_score_one(gsm_file):
    task = get_task("math", path=gsm_file, problem_key="question")
    rows = task.samples()
    assert [r["answer"] for r in rows] == ["54", "110"]
    for r in rows:
        assert task.prompt(r).startswith("Question: ") and r["question"] in task.prompt(r)
        assert "\\boxed{}" in task.prompt(r, chat=True)
        assert task.reward(task.target(r), r) == 1.0
        assert task.difficulty(r) == "all"


def test_math_parquet_loads_and_difficulty_is_the_level(tmp_path):
    path = tmp_path / "math.parquet"
    pq.write_table(
        pa.Table.from_pylist([{**r, "solution": r.get("solution", "")} for r in MATH]), path
    )
    task = get_task("math", path=path)
    rows = task.samples()
    assert [task.difficulty(r) for r in rows] == [1, 2, 1]
    assert task.target(rows[2]).strip() == MATH[2]["solution"]
    assert task.reward(task.target(rows[0]), rows[0]) == 1.0  # falls back to a boxed answer


def test_loader_errors_name_the_row_and_the_missing_field(tmp_path, gsm_file):
    with pytest.raises(ValueError, match=r"row 0: missing field 'problem'.*question"):
        get_task("math", path=gsm_file).samples()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"problem": "p", "answer": "1"}) + "\n" + json.dumps({"problem": "q"})
    )
    with pytest.raises(ValueError, match="row 1: missing field 'answer'"):
        get_task("math").samples(path=bad)
    with pytest.raises(ValueError, match="give a data file"):
        get_task("math").samples()


def test_trl_adapter_scores_math_completions(gsm_file):
    task = get_task("math", path=gsm_file, problem_key="question", timeout_s=SEMANTICS_TIMEOUT_S)
    rows = task.samples()
    fn = trl_reward(task)
    assert fn(["#### 54", "#### 54"], answer=[r["answer"] for r in rows]) == [1.0, 0.0]


def test_hostile_megabyte_responses_are_scored_fast():
    task = get_task("math")
    for text in [
        "\\boxed{" * 140_000,
        "{" * 1_000_000,
        "#### " * 200_000,
        "\\boxed{1}" + "}" * 10**6,
    ]:
        start = time.perf_counter()
        assert task.reward(text, MATH[2]) in (0.0, 1.0)
        assert time.perf_counter() - start < 15.0  # catastrophic backtracking would take minutes


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\boxed{}#fx1234 \n$")), max_size=60))
def test_extraction_never_raises_and_a_box_content_has_balanced_braces(text):
    found = last_boxed(text)
    if found is not None:
        content = found[1]
        assert content.count("{") == content.count("}")


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=120))
def test_any_response_scores_zero_or_one_without_raising(text):
    assert get_task("math").reward(text, MATH[0]) in (0.0, 1.0)
