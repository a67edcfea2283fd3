"""PMA merge weights (docs/design.md "Merging"): SMA, WMA, EMA by recursion, explicit weights."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmalopti.pma.weights import merge_weights, normalize_weights


@given(
    method=st.sampled_from(["sma", "wma", "ema"]),
    n=st.integers(1, 60),
    alpha=st.floats(1e-3, 1.0),
)
def test_every_method_gives_n_weights_that_sum_to_one(method, n, alpha):
    w = merge_weights(method, n, alpha if method == "ema" else None)
    assert len(w) == n
    assert math.fsum(w) == pytest.approx(1.0, abs=1e-12)
    assert all(x >= 0 for x in w)


def test_sma_weighs_every_checkpoint_equally():
    assert merge_weights("sma", 4) == [0.25] * 4


def test_wma_of_ten_gives_the_newest_ten_fifty_fifths():
    w = merge_weights("wma", 10)
    assert w[-1] == pytest.approx(10 / 55) and w[0] == pytest.approx(1 / 55)
    assert w == sorted(w)


def test_ema_with_alpha_one_is_the_newest_checkpoint():
    assert merge_weights("ema", 5, alpha=1.0) == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_ema_of_a_single_checkpoint_is_itself():
    assert merge_weights("ema", 1, alpha=0.2) == [1.0]
    assert merge_weights("sma", 1) == merge_weights("wma", 1) == [1.0]


@given(
    values=st.lists(st.floats(-100, 100), min_size=1, max_size=12),
    alpha=st.floats(0.01, 1.0),
)
def test_ema_weights_equal_the_recursion_applied_to_scalars(values, alpha):
    avg = values[0]  # M_avg(1) = M_1
    for v in values[1:]:
        avg = alpha * v + (1 - alpha) * avg  # M_avg(i) = a M_i + (1 - a) M_avg(i - 1)
    w = merge_weights("ema", len(values), alpha)
    assert math.fsum(wi * v for wi, v in zip(w, values, strict=True)) == pytest.approx(
        avg, rel=1e-9, abs=1e-9
    )


def test_ema_newest_weighs_alpha_and_oldest_carries_the_remainder():
    w = merge_weights("ema", 4, alpha=0.2)
    assert w[-1] == pytest.approx(0.2)
    assert w[1] == pytest.approx(0.2 * 0.8**2)
    assert w[0] == pytest.approx(0.8**3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sma", 0), "at least one checkpoint"),
        (("sma", -3), "at least one checkpoint"),
        (("sma", 2.5), "at least one checkpoint"),
        (("ema", 3), "ema needs --alpha"),
        (("ema", 3, 0.0), r"alpha must be in \(0, 1\]"),
        (("ema", 3, 1.5), r"alpha must be in \(0, 1\]"),
        (("ema", 3, float("nan")), r"alpha must be in \(0, 1\]"),
        (("median", 3), "unknown merge method 'median'"),
    ],
)
def test_bad_method_arguments_are_refused_with_a_reason(args, message):
    with pytest.raises(ValueError, match=message):
        merge_weights(*args)


def test_explicit_weights_are_normalised_keeping_their_ratios():
    assert normalize_weights([1, 2, 3, 4]) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert normalize_weights([2, -1]) == pytest.approx([2.0, -1.0])


@pytest.mark.parametrize(
    ("weights", "message"),
    [([], "at least one weight"), ([1, -1], "sum to zero"), ([1, float("inf")], "finite")],
)
def test_bad_explicit_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        normalize_weights(weights)
