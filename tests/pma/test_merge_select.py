"""Choosing checkpoints from a run folder: --last, --every, --every-tokens, --until, token counts."""

import itertools
import json

import pytest

from pmalopti.pma.select import (
    Checkpoint,
    checkpoints_from_paths,
    discover_checkpoints,
    format_table,
    parse_count,
    read_trainer_state,
    select_checkpoints,
)


def make_run(root, steps, *, tokens_per_step=None, prefix="checkpoint-"):
    for s in steps:
        d = root / f"{prefix}{s}"
        d.mkdir(parents=True)
        if tokens_per_step is not None:
            state = {"global_step": s, "num_input_tokens_seen": s * tokens_per_step}
            (d / "trainer_state.json").write_text(json.dumps(state))
    return root


def steps_of(ckpts):
    return [c.step for c in ckpts]


def test_run_folders_are_found_in_step_order_not_name_order(tmp_path):
    make_run(tmp_path, [900, 1000, 100, 2000])
    (tmp_path / "tmp-checkpoint-3000").mkdir()  # a save in progress is not a checkpoint
    (tmp_path / "logs").mkdir()
    assert steps_of(discover_checkpoints(tmp_path)) == [100, 900, 1000, 2000]


def test_step_folders_without_trainer_state_take_the_step_from_their_name(tmp_path):
    make_run(tmp_path, [5, 10], prefix="step")
    assert [(c.step, c.tokens) for c in discover_checkpoints(tmp_path)] == [(5, None), (10, None)]


def test_trainer_state_gives_steps_and_tokens(tmp_path):
    make_run(tmp_path, [10, 20], tokens_per_step=4096)
    assert [(c.step, c.tokens) for c in discover_checkpoints(tmp_path)] == [
        (10, 40960),
        (20, 81920),
    ]


def test_tokens_come_from_the_log_history_when_the_top_level_count_is_missing(tmp_path):
    (tmp_path / "trainer_state.json").write_text(
        json.dumps(
            {
                "global_step": 7,
                "num_input_tokens_seen": 0,
                "log_history": [
                    {"step": 5, "num_input_tokens_seen": 500},
                    {"step": 7, "num_input_tokens_seen": 700},
                    {"step": 7, "train_runtime": 1.0},
                ],
            }
        )
    )
    assert read_trainer_state(tmp_path) == (7, 700)


def test_last_keeps_the_newest_n(tmp_path):
    ckpts = discover_checkpoints(make_run(tmp_path, range(100, 1100, 100)))
    assert steps_of(select_checkpoints(ckpts, last=3).checkpoints) == [800, 900, 1000]


def test_every_k_is_a_deprecated_alias_of_every_steps_on_evenly_spaced_folders(tmp_path):
    ckpts = discover_checkpoints(make_run(tmp_path, range(100, 1100, 100)))
    sel = select_checkpoints(ckpts, every=3)
    assert steps_of(sel.checkpoints) == [100, 400, 700, 1000]
    assert "--every 3 is deprecated; it stands for --every-steps 300" in sel.notes[0]
    assert steps_of(select_checkpoints(ckpts, every=3, last=2).checkpoints) == [700, 1000]


def test_until_includes_its_step_and_spacing_counts_back_from_there(tmp_path):
    ckpts = discover_checkpoints(make_run(tmp_path, range(100, 1100, 100)))
    assert steps_of(select_checkpoints(ckpts, until=650, last=3).checkpoints) == [400, 500, 600]
    assert steps_of(select_checkpoints(ckpts, until=600, last=3).checkpoints) == [400, 500, 600]
    sel = select_checkpoints(ckpts, until=600, every_steps=200)
    assert steps_of(sel.checkpoints) == [200, 400, 600] and sel.targets == [200, 400, 600]


def test_every_tokens_picks_checkpoints_exactly_that_far_apart_counting_back(tmp_path):
    ckpts = discover_checkpoints(make_run(tmp_path, range(100, 1100, 100), tokens_per_step=1000))
    picked = select_checkpoints(ckpts, every_tokens=300_000).checkpoints
    assert steps_of(picked) == [100, 400, 700, 1000]
    assert {b.tokens - a.tokens for a, b in itertools.pairwise(picked)} == {300_000}
    with pytest.raises(ValueError, match="no checkpoint at token counts 250,000, 750,000"):
        select_checkpoints(ckpts, every_tokens=250_000)


def test_every_tokens_without_token_counts_is_refused(tmp_path):
    ckpts = discover_checkpoints(make_run(tmp_path, [1, 2, 3]))
    with pytest.raises(ValueError, match="num_input_tokens_seen"):
        select_checkpoints(ckpts, every_tokens=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"last": 20}, "--last 20 asked, but only 10"),
        ({"last": 0}, "--last must be at least 1"),
        ({"every": 0}, "--every must be at least 1"),
        ({"every_steps": 0}, "--every-steps must be at least 1"),
        ({"until": 50}, "no checkpoint at or before step 50"),
        ({"every": 2, "every_tokens": 5}, "not both"),
        ({"every_steps": 2, "every_tokens": 5}, "not both"),
        ({"nearest": True}, "--nearest applies to --every-steps or --every-tokens"),
        ({"every_steps": 400, "last": 4}, "reaches back to step -200"),
    ],
)
def test_impossible_selections_say_why(tmp_path, kwargs, message):
    ckpts = discover_checkpoints(make_run(tmp_path, range(100, 1100, 100)))
    with pytest.raises(ValueError, match=message):
        select_checkpoints(ckpts, **kwargs)


def test_a_run_folder_without_checkpoints_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint-<step>"):
        discover_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_checkpoints(tmp_path / "nope")


def test_explicit_paths_are_ordered_by_step(tmp_path):
    make_run(tmp_path, [1000, 90])
    ckpts = checkpoints_from_paths([tmp_path / "checkpoint-1000", tmp_path / "checkpoint-90"])
    assert steps_of(ckpts) == [90, 1000]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5GB", 5 * 10**9),
        ("200MB", 2 * 10**8),
        ("1GiB", 2**30),
        ("4B", 4 * 10**9),
        ("1.5T", 1.5e12),
        ("4096", 4096),
        ("10k", 10_000),
    ],
)
def test_sizes_and_token_counts_parse_with_units(text, value):
    assert parse_count(text) == value


def test_unparseable_sizes_are_refused():
    with pytest.raises(ValueError, match="--shard-size: cannot parse"):
        parse_count("five gigs", "--shard-size")


def test_the_table_lists_step_tokens_and_weight_per_checkpoint(tmp_path):
    table = format_table(
        [Checkpoint(tmp_path / "a", 100, 12345), Checkpoint(tmp_path / "b", None, None)],
        [0.25, 0.75],
    )
    head, first, second = table.splitlines()
    assert head.split() == ["#", "checkpoint", "step", "tokens", "weight"]
    assert first.split()[2:] == ["100", "12,345", "0.2500"]
    assert second.split()[2:] == ["-", "-", "0.7500"]
