"""Arithmetic task and the shared Task machinery (registry, TRL adapter)."""

from __future__ import annotations

import pytest

from pmalopti.tasks import Task, available_tasks, get_task, trl_reward
from pmalopti.tasks.arithmetic import ArithmeticTask, problem_split


@pytest.fixture
def task() -> ArithmeticTask:
    return get_task("arithmetic")


def test_get_task_returns_a_task_for_every_builtin_name():
    assert {"kk", "math", "arithmetic"} <= set(available_tasks())
    assert isinstance(get_task("arithmetic"), Task)


def test_get_task_rejects_an_unknown_name_and_lists_the_choices():
    with pytest.raises(ValueError, match="arithmetic"):
        get_task("sudoku")


def test_samples_are_deterministic_for_a_seed_and_differ_across_seeds(task):
    assert task.samples("train", 50, seed=3) == task.samples("train", 50, seed=3)
    assert task.samples("train", 50, seed=3) != task.samples("train", 50, seed=4)


def test_train_and_test_problems_never_overlap(task):
    key = lambda s: (s["a"], s["b"], s["op"])  # noqa: E731
    train = {key(s) for s in task.samples("train", 5000, seed=0)}
    test = {key(s) for s in task.samples("test", 300, seed=0)}
    assert train and test and not train & test
    assert all(problem_split(*k, task.test_percent) == "test" for k in test)


def test_test_split_is_unique_and_too_many_unique_problems_is_a_clear_error():
    small = ArithmeticTask(min_digits=1, max_digits=1)
    test = small.samples("test", 5)
    assert len({(s["a"], s["b"]) for s in test}) == 5
    with pytest.raises(ValueError, match="unique"):
        small.samples("test", 100)


def test_prompt_plus_target_is_a_correct_equation_and_scores_full_reward(task):
    for s in task.samples("train", 200, seed=1):
        text = task.prompt(s) + task.target(s)
        lhs, rhs = text.split("=")
        assert eval(lhs, {}) == int(rhs)  # the test's own reference, on digits only
        assert task.reward(task.target(s), s) == 1.0
        assert task.is_correct(task.target(s) + "<|endoftext|>", s)


def test_reward_is_exact_match_one_or_zero(task):
    s = ArithmeticTask.make_sample(12, 35)
    assert task.reward("47", s) == 1.0
    assert task.reward(" 47\n", s) == 1.0
    for wrong in ["48", "47 ", "047", "47\n12+35=47", "", "forty-seven", "4 7"]:
        expected = 1.0 if wrong.strip() == "47" else 0.0
        assert task.reward(wrong, s) == expected, wrong


def test_difficulty_is_the_number_of_digits_of_the_longest_operand(task):
    assert task.difficulty(ArithmeticTask.make_sample(7, 123)) == 3
    assert task.difficulty({"a": 7, "b": 12}) == 2
    levels = {task.difficulty(s) for s in task.samples("train", 300)}
    assert levels == {1, 2, 3}


def test_subtraction_never_has_a_negative_answer():
    t = ArithmeticTask(ops="-", max_digits=2)
    assert all(int(s["answer"]) >= 0 for s in t.samples("train", 300))


@pytest.mark.parametrize(
    "kwargs", [{"min_digits": 0}, {"min_digits": 3, "max_digits": 2}, {"ops": "*"}]
)
def test_bad_options_raise_naming_the_field(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
        ArithmeticTask(**kwargs)


def test_chat_prompt_without_a_template_uses_chatml_and_ends_in_the_assistant_turn(task):
    p = task.prompt(ArithmeticTask.make_sample(2, 3), chat=True)
    assert p.endswith("<|im_start|>assistant\n") and "2+3" in p


def test_trl_adapter_rebuilds_each_sample_from_columns_and_ignores_trainer_kwargs(task):
    fn = trl_reward(task)
    assert fn.__name__ == "arithmetic_reward"
    rewards = fn(
        ["5", [{"role": "assistant", "content": "7"}], "1"],
        prompts=["2+3=", "3+4=", "0+0="],
        completion_ids=[[1], [2], [3]],
        trainer_state=object(),
        a=[2, 3, 0],
        b=[3, 4, 0],
        op=["+", "+", "+"],
    )
    assert rewards == [1.0, 1.0, 0.0]


def test_trl_adapter_rejects_columns_of_the_wrong_length(task):
    with pytest.raises(ValueError, match="'a'"):
        trl_reward(task)(["5"], a=[2, 3], b=[3])


def test_reverse_writes_the_answer_least_significant_digit_first():
    t = ArithmeticTask(reverse=True)
    s = ArithmeticTask.make_sample(12, 39)
    assert t.target(s) == "15" and t.reward("15", s) == 1.0 and t.reward("51", s) == 0.0
    for s in t.samples("train", 100):
        assert t.target(s)[::-1] == ArithmeticTask.answer(s) and t.is_correct(t.target(s), s)
