"""One vocabulary across commands, the --force rule, atomic outputs, and one-line errors."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from pmalopti.cli import build_parser, main
from pmalopti.errors import OutputError
from pmalopti.runtime.fs import (
    MARKER,
    atomic_dir,
    atomic_write_text,
    follow_umask,
    is_ours,
    prepare_run_dir,
    write_marker,
)

FOLDER_WRITERS = ["merge", "recover", "pretrain", "sft", "grpo", "demo"]
TRAINING = ["pretrain", "sft", "grpo"]


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command].format_help()


# --- the shared vocabulary ---------------------------------------------------------------------


@pytest.mark.parametrize("command", FOLDER_WRITERS)
def test_every_command_that_writes_a_folder_takes_output_and_force(command):
    text = _help(command)
    assert re.search(r"-o (\w+), --output \1", text)
    assert "--force" in text and "pmalopti wrote" in text


@pytest.mark.parametrize("command", [*TRAINING, "recover", "demo"])
def test_training_commands_take_config_set_and_resume(command):
    text = _help(command)
    assert "--config FILE" in text and "--set KEY=VALUE" in text and "--resume" in text


@pytest.mark.parametrize("command", TRAINING)
def test_training_commands_start_from_weights_with_init_from(command):
    assert "--init-from CKPT" in _help(command)


@pytest.mark.parametrize("command", ["merge", "recover"])
def test_merge_methods_are_spelt_method_and_alpha(command):
    text = _help(command)
    assert "--method {sma,ema,wma}" in text and "--alpha" in text


@pytest.mark.parametrize(("command", "old"), [("grpo", "--output-dir"), ("demo", "--out")])
def test_old_spellings_are_hidden_aliases_of_output(command, old):
    assert old + " " not in _help(command)
    parser = build_parser()
    extra = ["--run-dir", "r", "--last", "1"] if command == "recover" else []
    args = parser.parse_args([command, *extra, old, "somewhere"])
    assert args.output == "somewhere"


def test_recover_still_accepts_the_old_method_spelling():
    args = build_parser().parse_args(
        ["recover", "--run-dir", "r", "--last", "2", "-o", "x", "--method", "ema:0.2"]
    )
    assert (args.method, args.alpha) == ("ema", 0.2)
    args = build_parser().parse_args(
        ["recover", "--run-dir", "r", "--last", "2", "-o", "x", "--method", "ema", "--alpha", "0.1"]
    )
    assert (args.method, args.alpha) == ("ema", 0.1)


def test_an_unknown_merge_method_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["merge", "a", "b", "--method", "median"])
    assert exc.value.code == 2
    assert "median" in capsys.readouterr().err


# --- what --force may replace ------------------------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("target", [".", "..", "../.."])
def test_force_never_replaces_the_working_folder_or_its_parents(in_tmp, target):
    write_marker(in_tmp, "run")  # even one pmalopti wrote
    (in_tmp / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="working folder"), atomic_dir(target, force=True):
        pass
    with pytest.raises(OutputError, match="working folder"):
        prepare_run_dir(target, force=True)
    assert (in_tmp / "keep.txt").read_text() == "mine"


def test_force_never_replaces_a_folder_without_the_marker(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.txt").write_text("precious")
    with pytest.raises(OutputError, match="not written by pmalopti"):
        prepare_run_dir(tmp_path / "data", force=True)
    with (
        pytest.raises(OutputError, match="not written by pmalopti"),
        atomic_dir(tmp_path / "data", force=True),
    ):
        pass
    assert (tmp_path / "data" / "train.txt").read_text() == "precious"


@pytest.mark.parametrize("where", ["equal", "inside", "holds"])
def test_force_never_replaces_an_input(tmp_path, where):
    ckpt = tmp_path / "run" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    write_marker(tmp_path / "run", "run")
    write_marker(ckpt, "checkpoint")
    out = {"equal": ckpt, "inside": ckpt / "merged", "holds": tmp_path / "run"}[where]
    with pytest.raises(OutputError, match="input"), atomic_dir(out, force=True, inputs=[ckpt]):
        pass
    with pytest.raises(OutputError, match="input"):
        prepare_run_dir(out, force=True, inputs=[ckpt])
    assert ckpt.is_dir() and is_ours(ckpt)


def test_force_replaces_a_folder_pmalopti_wrote(tmp_path):
    with atomic_dir(tmp_path / "m", kind="merge") as tmp:
        (tmp / "a.txt").write_text("old")
    assert is_ours(tmp_path / "m")
    with atomic_dir(tmp_path / "m", force=True, kind="merge") as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [MARKER, "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing left beside it


def test_force_on_a_run_starts_from_an_empty_folder(tmp_path):
    run = prepare_run_dir(tmp_path / "run")
    (run / "checkpoint-100").mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(OutputError, match=r"--resume.*--force"):
        prepare_run_dir(run)
    assert prepare_run_dir(run, resume=True) == run  # resume keeps everything
    assert (run / "checkpoint-100").is_dir()
    prepare_run_dir(run, force=True)
    assert [p.name for p in run.iterdir()] == [MARKER]


def test_an_empty_existing_folder_is_used_as_if_absent(tmp_path):
    (tmp_path / "m").mkdir()
    with atomic_dir(tmp_path / "m") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "m" / "x").read_text() == "1"


def test_force_refusals_exit_2_with_one_line_and_touch_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    for argv in (
        ["grpo", "-o", ".", "--force"],
        ["grpo", "--output-dir", ".", "--force"],
        ["pretrain", "-o", "..", "--force"],
        ["demo", "--smoke", "-o", ".", "--force"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "working folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# --- atomic outputs ----------------------------------------------------------------------------


def test_an_output_that_appears_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="appeared"), atomic_dir(out) as tmp:
        (tmp / "mine").write_text("A")
        out.mkdir()
        (out / "theirs").write_text("B")
    assert [p.name for p in out.iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # our temp folder is gone


def test_with_force_an_output_replaced_meanwhile_is_not_replaced_again(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(OutputError, match="appeared"), atomic_dir(out, force=True) as tmp:
        (tmp / "v").write_text("mine")
        with atomic_dir(out, force=True) as other:  # another writer finishes first
            (other / "v").write_text("theirs")
    assert (out / "v").read_text() == "theirs"


def test_of_two_concurrent_writers_one_wins_and_the_other_fails_clearly(tmp_path):
    out = tmp_path / "out"
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def writer(name: str) -> None:
        try:
            with atomic_dir(out) as tmp:
                (tmp / "who").write_text(name)
                barrier.wait(timeout=10)  # both are inside, both saw no output
            results[name] = "ok"
        except OutputError as exc:
            results[name] = str(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()).count("ok") == 1
    loser = next(v for v in results.values() if v != "ok")
    assert "appeared" in loser
    winner = next(k for k, v in results.items() if v == "ok")
    assert (out / "who").read_text() == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_error_inside_leaves_the_old_output_and_no_temporary_folder(tmp_path):
    with atomic_dir(tmp_path / "m") as tmp:
        (tmp / "v").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "m", force=True) as tmp:
        (tmp / "v").write_text("new")
        raise RuntimeError("boom")
    assert (tmp_path / "m" / "v").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- modes follow the umask --------------------------------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_atomic_outputs_follow_the_umask_not_mkdtemp(tmp_path, umask_022):
    with atomic_dir(tmp_path / "m") as tmp:
        (tmp / "sub").mkdir()
        fd = os.open(tmp / "sub" / "weights", os.O_WRONLY | os.O_CREAT, 0o600)  # as transformers
        os.close(fd)
    assert _mode(tmp_path / "m") == 0o755
    assert _mode(tmp_path / "m" / "sub") == 0o755
    assert _mode(tmp_path / "m" / "sub" / "weights") == 0o644
    assert _mode(tmp_path / "m" / MARKER) == 0o644
    atomic_write_text(tmp_path / "f.txt", "x")
    assert _mode(tmp_path / "f.txt") == 0o644


def test_a_stricter_umask_is_followed_too(tmp_path):
    old = os.umask(0o077)
    try:
        with atomic_dir(tmp_path / "m") as tmp:
            (tmp / "x").write_text("1")
        run = prepare_run_dir(tmp_path / "run")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "m") == 0o700 and _mode(tmp_path / "m" / "x") == 0o600
    assert _mode(run) == 0o700


def test_follow_umask_fixes_what_save_pretrained_writes(tiny_lm, tmp_path, umask_022):
    model, _ = tiny_lm
    model.save_pretrained(tmp_path / "hf")
    follow_umask(tmp_path / "hf")
    assert {_mode(p) for p in (tmp_path / "hf").iterdir()} == {0o644}
    assert _mode(tmp_path / "hf") == 0o755


# --- leftovers of killed writers ---------------------------------------------------------------


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_one(tmp_path):
    import subprocess
    import sys

    from pmalopti.runtime._posix import make_temp_dir, temp_name

    code = (
        "import sys; from pmalopti.runtime._posix import make_temp_dir; "
        "print(make_temp_dir(sys.argv[1], '.tmp-out-'))"
    )
    dead = Path(
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    live = make_temp_dir(tmp_path, ".tmp-other-")  # this process: still writing
    foreign = tmp_path / ".tmp-notes"  # not one of ours
    foreign.mkdir()
    assert temp_name(".tmp-x-") != temp_name(".tmp-x-")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("1")
    assert not dead.exists()
    assert live.is_dir() and foreign.is_dir()
