"""`pmalopti merge` through `main(argv)`: selection, dry run, weights, errors, the example."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from pmalopti.cli import main


def make_run(root, steps=(100, 200, 300, 400), tokens_per_step=1000):
    """A run folder of tiny checkpoints; checkpoint at step s holds the constant s."""
    for s in steps:
        d = root / f"checkpoint-{s}"
        d.mkdir(parents=True)
        save_file(
            {"w": torch.full((4, 3), float(s)), "b": torch.full((3,), -float(s))},
            d / "model.safetensors",
        )
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
        state = {"global_step": s, "num_input_tokens_seen": s * tokens_per_step}
        (d / "trainer_state.json").write_text(json.dumps(state))
        (d / "optimizer.pt").write_bytes(b"not copied")
    return root


def merged_value(out):
    return float(load_file(out / "model.safetensors")["w"][0, 0])


def test_dry_run_prints_steps_tokens_and_weights_and_writes_nothing(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert (
        main(
            [
                "merge",
                "--run-dir",
                str(run),
                "--last",
                "2",
                "--method",
                "wma",
                "--dry-run",
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "wma, 2 checkpoints" in out
    rows = [line.split() for line in out.splitlines() if "checkpoint-" in line]
    assert [r[2:] for r in rows] == [["300", "300,000", "0.3333"], ["400", "400,000", "0.6667"]]
    assert not (tmp_path / "out").exists()


def test_run_dir_merge_with_ema_writes_the_recursion_and_records_it(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    argv = [
        "merge",
        "--run-dir",
        str(run),
        "--last",
        "3",
        "--method",
        "ema",
        "--alpha",
        "0.5",
        "-o",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    # EMA over 200, 300, 400 with alpha 0.5: ((200 + 300) / 2 + 400) / 2.
    assert merged_value(out) == pytest.approx(325.0)
    meta = json.loads((out / "pmalopti_merge.json").read_text())
    assert meta["method"] == "ema" and meta["alpha"] == 0.5
    assert [i["step"] for i in meta["inputs"]] == [200, 300, 400]
    assert [i["weight"] for i in meta["inputs"]] == [0.25, 0.25, 0.5]
    assert meta["selection"]["last"] == 3
    assert (out / "config.json").is_file() and not (out / "optimizer.pt").exists()
    assert not (out / "trainer_state.json").exists()


def test_every_and_until_select_before_a_spike(tmp_path):
    run = make_run(tmp_path / "run", steps=range(100, 1100, 100))
    out = tmp_path / "out"
    assert (
        main(
            [
                "merge",
                "--run-dir",
                str(run),
                "--until",
                "800",
                "--every",
                "2",
                "--last",
                "3",
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert merged_value(out) == pytest.approx((400 + 600 + 800) / 3, rel=1e-6)


def test_every_tokens_uses_trainer_state_token_counts(tmp_path, capsys):
    run = make_run(tmp_path / "run", steps=range(100, 1100, 100))
    assert main(["merge", "--run-dir", str(run), "--every-tokens", "300k", "--dry-run"]) == 0
    steps = [
        int(line.split()[2])
        for line in capsys.readouterr().out.splitlines()
        if "checkpoint-" in line
    ]
    assert steps == [100, 400, 700, 1000]


def test_explicit_paths_and_weights(tmp_path):
    run = make_run(tmp_path / "run", steps=(100, 200))
    out = tmp_path / "out"
    paths = [str(run / "checkpoint-100"), str(run / "checkpoint-200")]
    assert (
        main(
            [
                "merge",
                *paths,
                "--weights",
                "3,1",
                "--dtype",
                "bf16",
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert merged_value(out) == pytest.approx(125.0)
    assert load_file(out / "model.safetensors")["w"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "ema", "--alpha", "1.5"], r"alpha must be in \(0, 1\]"),
        (["--method", "ema"], "ema needs an alpha: --method ema --alpha A"),
        (["--alpha", "0.2"], "--alpha is only used by --method ema"),
        (["--weights", "1,-1"], "sum to zero"),
        (["--weights", "1,2,3"], "--weights has 3 values for 2 checkpoints"),
        (["--weights", "1,x"], "expected numbers"),
        (["--weights", "1,1", "--method", "sma"], "--weights replaces --method"),
        (["--shard-size", "lots"], "--shard-size: cannot parse"),
    ],
)
def test_bad_options_exit_2_with_a_message_and_no_output(tmp_path, capsys, extra, message):
    run = make_run(tmp_path / "run", steps=(100, 200))
    out = tmp_path / "out"
    assert main(["merge", "--run-dir", str(run), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pmalopti merge: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_missing_inputs_and_existing_outputs_are_errors(tmp_path, capsys):
    run = make_run(tmp_path / "run", steps=(100, 200))
    assert main(["merge", "-o", str(tmp_path / "o")]) == 2
    assert "give checkpoints to merge" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert main(["merge", "--run-dir", str(run), "-o", str(tmp_path / "o")]) == 2
    assert "already exists (use --force" in capsys.readouterr().err
    assert main(["merge", "--run-dir", str(run), "--dry-run"]) == 0
    assert main(["merge", "--run-dir", str(run)]) == 2
    assert "-o/--output OUT is required" in capsys.readouterr().err


def test_example_trains_saves_and_merges_a_tiny_run(tmp_path, capsys, monkeypatch):
    import pmalopti.commands._merge_example as example

    monkeypatch.setattr(example, "STEPS", 24)  # the real example trains 160 steps
    monkeypatch.setattr(example, "SAVE_EVERY", 6)
    out = tmp_path / "ex"
    assert main(["merge", "--example", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in (out / "run").glob("checkpoint-*")) == [
        f"checkpoint-{s}" for s in (12, 18, 24, 6)
    ]
    meta = json.loads((out / "merged" / "pmalopti_merge.json").read_text())
    assert [i["step"] for i in meta["inputs"]] == [6, 12, 18, 24]
    assert "PMA (sma, last 4)" in text and "held-out loss" in text
    assert main(["merge", "--example", "-o", str(out)]) == 2  # exists: refused without --force
