"""The math reward never hangs: a screen for hostile answers and a hard deadline in worker processes."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("math_verify")

from pmalopti.tasks import get_task
from pmalopti.tasks.math_screen import screen_answer
from pmalopti.tasks.verify_worker import VerifyPool

BOUND_S = 5.0  # generous: the benchmark (benchmarks/reward_worst_case.py) shows the real numbers


def in_thread(fn, *args):
    """fn(*args) from a non-main thread; fails the test if it has not returned within BOUND_S."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(value=fn(*args)), daemon=True)
    start = time.perf_counter()
    t.start()
    t.join(BOUND_S)
    assert not t.is_alive(), f"no answer from a worker thread within {BOUND_S} s"
    return box["value"], time.perf_counter() - start


@pytest.fixture(scope="module")
def pool():
    p = VerifyPool(timeout_s=0.5, max_workers=2)
    assert p.verify("1", "1")  # start the workers outside the timed calls
    yield p
    p.close()


@pytest.mark.parametrize(
    "answer",
    [
        "10^{10^{10}}",
        "9^{9^{9}}",
        "2^2^2^2^2",
        "10**10**10",
        "10^{ 10^{ 10 } }",
        "\\left(2^{2}\\right)^{10^{5}}",
        "2^{100000}",
        "x^{123456}",
        "100000!",
        "((10!)!)!",
        "{" * 50 + "1" + "}" * 50,
        "1" * 2001,
    ],
)
def test_the_screen_refuses_answers_that_are_hostile_on_their_face(answer):
    assert screen_answer(answer) is not None


@pytest.mark.parametrize(
    "answer",
    [
        "\\frac{3}{4}",
        "e^{x^2}",
        "2^{2^{3}}",
        "x^2+y^2",
        "(x+1)^{9999}",
        "2^{-3}",
        "10!",
        "1.5^{2.5}",
    ],
)
def test_the_screen_lets_ordinary_answers_through(answer):
    assert screen_answer(answer) is None


def test_a_power_tower_from_a_worker_thread_scores_zero_within_the_bound():
    task = get_task("math")
    reward, seconds = in_thread(task.reward, "so \\boxed{10^{10^{10}}}", {"answer": "1"})
    assert reward == 0.0 and seconds < BOUND_S


def test_an_unscreened_hostile_answer_is_killed_at_the_deadline_from_a_thread(pool):
    before = pool.timeouts
    ok, seconds = in_thread(pool.verify, "10^{10^{10}}", "1")  # bypasses the screen
    assert ok is False and seconds < BOUND_S
    assert pool.timeouts == before + 1
    # the killed worker was replaced: the next ordinary answer is verified as usual
    assert in_thread(pool.verify, "\\frac{3}{4}", "0.75")[0] is True


def test_concurrent_threads_mixing_hostile_and_ordinary_answers_all_return(pool):
    cases = [("10^{10^{10}}", "1", False), ("\\frac{6}{8}", "0.75", True)] * 3
    results: list = [None] * len(cases)

    def work(i, pred, gold):
        results[i] = pool.verify(pred, gold)

    threads = [
        threading.Thread(target=work, args=(i, p, g), daemon=True)
        for i, (p, g, _) in enumerate(cases)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * BOUND_S)
    assert not any(t.is_alive() for t in threads)
    assert time.perf_counter() - start < 4 * BOUND_S
    assert results == [want for _, _, want in cases]


def test_a_timeout_outside_its_bounds_is_refused():
    with pytest.raises(ValueError, match="timeout_s"):
        get_task("math", timeout_s=0)
