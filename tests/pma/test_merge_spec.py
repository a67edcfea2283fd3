"""MergeSpec: one parser for every spelling of a merge method, validated in one place."""

import argparse

import pytest

from pmalopti.commands._common import add_merge_method
from pmalopti.commands.merge import merge_spec_from_args
from pmalopti.errors import UserError
from pmalopti.pma.spec import MergeSpec
from pmalopti.pma.weights import merge_weights


def cli(argv):
    p = argparse.ArgumentParser()
    add_merge_method(p, default=None)
    p.add_argument("--weights")
    return merge_spec_from_args(p.parse_args(argv))


def test_both_spellings_of_ema_give_the_same_spec():
    assert cli(["--method", "ema", "--alpha", "0.2"]) == cli(["--method", "ema:0.2"])
    assert MergeSpec.parse("ema:0.2") == MergeSpec("ema", 0.2) == MergeSpec.parse("ema", 0.2)
    assert MergeSpec.parse("EMA:0.2").merge_weights(3) == merge_weights("ema", 3, 0.2)


def test_the_default_is_sma_and_the_config_spelling_round_trips():
    assert cli([]) == MergeSpec() == MergeSpec.parse("sma")
    for text in ("sma", "wma", "ema:0.1", "ema:0.2", "ema:1"):
        assert str(MergeSpec.parse(text)) == text
    assert MergeSpec.parse("ema:0.2").label == "EMA α=0.2" and MergeSpec().label == "SMA"


def test_explicit_weights_are_normalised_and_must_match_the_checkpoints():
    spec = cli(["--weights", "1,3"])
    assert spec.method == "weights" and spec.merge_weights(2) == [0.25, 0.75]
    with pytest.raises(ValueError, match="--weights has 2 values for 3 checkpoints"):
        spec.merge_weights(3)


def test_only_ema_ignores_the_order_of_nothing():
    assert not MergeSpec().order_sensitive
    assert all(
        s.order_sensitive
        for s in (MergeSpec("wma"), MergeSpec("ema", 0.2), cli(["--weights", "1,2"]))
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "ema"], "ema needs an alpha"),
        (["--method", "ema", "--alpha", "0"], r"alpha must be in \(0, 1\]"),
        (["--method", "ema:1.5"], r"alpha must be in \(0, 1\]"),
        (["--method", "ema:nan"], r"alpha must be in \(0, 1\]"),
        (["--method", "wma", "--alpha", "0.2"], "--alpha is only used by --method ema"),
        (["--weights", "1,1", "--method", "sma"], "--weights replaces --method"),
        (["--weights", "1,-1"], "sum to zero"),
        (["--weights", "1,x"], "expected numbers"),
    ],
)
def test_every_invalid_spelling_is_one_clear_error(argv, message):
    with pytest.raises(UserError, match=message):
        cli(argv)


def test_the_parser_refuses_unknown_names_and_bad_alphas_in_the_old_spelling(capsys):
    for argv in (["--method", "median"], ["--method", "ema:x"]):
        with pytest.raises(SystemExit):
            cli(argv)
    with pytest.raises(ValueError, match="merge method 'median' is not allowed"):
        MergeSpec.parse("median")
    with pytest.raises(ValueError, match="'x' is not a number"):
        MergeSpec.parse("ema:x")
    with pytest.raises(ValueError, match="give the alpha once"):
        MergeSpec.parse("ema:0.2", 0.2)


def test_recover_takes_the_same_method_options(tmp_path, capsys):
    from pmalopti.cli import main

    argv = ["recover", "--run-dir", str(tmp_path), "--last", "2", "-o", str(tmp_path / "o")]
    assert main([*argv, "--method", "ema"]) == 2
    assert "ema needs an alpha" in capsys.readouterr().err
