"""pmalopti pretrain: WSD schedule, data packing/batching, checkpoints, exact resume, config errors."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal

import pytest
import torch

from pmalopti.cli import main
from pmalopti.config import ConfigError, load_config
from pmalopti.lm.data import batch_indices, pack_blocks, read_texts, split_texts
from pmalopti.lm.loss import token_loss_sum
from pmalopti.lm.pretrain import PretrainConfig, pretrain
from pmalopti.lm.schedule import decay_factor, wsd_lr, wsd_phase
from pmalopti.runtime.checkpoint import list_checkpoints
from pmalopti.runtime.runlog import read_metrics

TINY = [
    "seed=0",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.vocab_size=300",
    "data.num_docs=120",
    "data.block_size=32",
    "data.val_fraction=0.1",
    "data.max_val_blocks=4",
    "train.steps=6",
    "train.batch_size=4",
    "train.save_every=2",
    "train.eval_every=3",
    "train.progress=false",
    "schedule.warmup_steps=1",
    "schedule.decay_steps=2",
    "optim.lr=3e-3",
    "report.n=2",
    "report.points=2",
]


def tiny_cfg(*extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*TINY, *extra])


# --- schedule ----------------------------------------------------------------------------------


def test_wsd_warms_up_linearly_holds_the_peak_then_decays_to_the_floor():
    kw = dict(peak_lr=1.0, total_steps=100, warmup_steps=10, decay_steps=20, min_lr_ratio=0.1)
    lrs = [wsd_lr(s, **kw) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(lr == 1.0 for lr in lrs[10:81])
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[80:]))
    assert [
        wsd_phase(s, total_steps=100, warmup_steps=10, decay_steps=20) for s in (9, 10, 79, 80)
    ] == [
        "warmup",
        "stable",
        "stable",
        "decay",
    ]


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt", "exp"])
def test_every_decay_shape_starts_at_one_ends_at_the_floor_and_never_rises(shape):
    xs = [i / 50 for i in range(51)]
    fs = [decay_factor(x, shape, 0.05) for x in xs]
    assert fs[0] == pytest.approx(1.0) and fs[-1] == pytest.approx(0.05)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(fs))


def test_decay_shapes_differ_at_the_midpoint_as_their_formulas_say():
    assert decay_factor(0.5, "linear", 0.0) == pytest.approx(0.5)
    assert decay_factor(0.5, "cosine", 0.0) == pytest.approx(0.5)
    assert decay_factor(0.25, "cosine", 0.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert decay_factor(0.25, "sqrt", 0.0) == pytest.approx(0.5)
    assert decay_factor(0.5, "exp", 0.01) == pytest.approx(0.1)


def test_a_schedule_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match="exceed total_steps"):
        wsd_lr(0, peak_lr=1.0, total_steps=10, warmup_steps=6, decay_steps=5)


# --- data --------------------------------------------------------------------------------------


def test_packing_joins_documents_with_eos_and_drops_the_partial_tail():
    blocks = pack_blocks([[5, 6, 7], [8, 9]], block_size=3, eos_id=0)
    assert blocks.tolist() == [[5, 6, 7], [0, 8, 9]]  # the final EOS is the dropped tail


def test_batches_cover_each_epoch_exactly_once_and_are_a_pure_function_of_the_step():
    n, bs = 10, 4
    first_epoch = [i for s in range(5) for i in batch_indices(s, bs, n, seed=3)][:10]
    assert sorted(first_epoch) == list(range(n))
    assert batch_indices(7, bs, n, seed=3) == batch_indices(7, bs, n, seed=3)
    assert batch_indices(0, bs, n, seed=3) != batch_indices(0, bs, n, seed=4)


def test_validation_documents_never_appear_in_training():
    texts = [f"doc {i}" for i in range(50)]
    train, val = split_texts(texts, 0.2, seed=1)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == sorted(texts)


def test_unreadable_data_files_are_reported_with_their_path(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl"):
        read_texts(bad)
    with pytest.raises(ValueError, match="no field 'body'"):
        (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
        read_texts(tmp_path / "x.jsonl", "body")
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        read_texts(tmp_path / "missing.txt")
    binary = tmp_path / "b.parquet"
    binary.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="cannot read data file"):
        read_texts(binary)


def test_two_micro_batches_give_the_same_loss_sum_as_one_batch(tiny_lm):
    model, _ = tiny_lm
    x = torch.randint(2, model.config.vocab_size, (4, 12))
    labels = x.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        hf = model(input_ids=x, labels=labels).loss
        whole = token_loss_sum(model(input_ids=x).logits, labels)
        parts = [
            token_loss_sum(model(input_ids=x[i : i + 2]).logits, labels[i : i + 2]) for i in (0, 2)
        ]
    assert whole[1] == sum(n for _, n in parts)
    assert float(whole[0]) == pytest.approx(sum(float(s) for s, _ in parts), rel=1e-5)
    assert float(whole[0]) / whole[1] == pytest.approx(hf.item(), rel=1e-5)


# --- runs --------------------------------------------------------------------------------------


def test_a_short_run_writes_loadable_hugging_face_checkpoints(tiny_run):
    from transformers import AutoModelForCausalLM

    from pmalopti.runtime.hf import load_tokenizer

    run, result = tiny_run
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 6] and result.step == 6
    ckpt = run / "checkpoint-6"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = load_tokenizer(ckpt)
    ids = tok("Ada says: the knight", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["num_input_tokens_seen"] == 6 * 4 * 32
    assert (ckpt / "training_state.pt").is_file() and (ckpt / "generation_config.json").is_file()
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert load_config(PretrainConfig, run / "config.yaml") == tiny_cfg()


def test_the_end_of_run_report_has_a_table_a_figure_and_merge_points(tiny_run):
    run, _ = tiny_run
    result = json.loads((run / "report" / "pma.json").read_text())
    assert (run / "report" / "pma.png").stat().st_size > 1000
    assert "| step |" in (run / "report" / "pma.md").read_text()
    # stable checkpoints are 2 and 4 (warmup 1, decay 2 of 6): one merge point at 4, N=2.
    assert [p["step"] for p in result["points"]] == [4] and result["points"][0]["merged_steps"] == [
        2,
        4,
    ]
    assert result["annealed"]["step"] == 6


def test_ctrl_c_writes_a_checkpoint_and_resume_reproduces_the_uninterrupted_losses(
    tiny_run, tmp_path
):
    run, _ = tiny_run
    cut = tmp_path / "cut"

    def interrupt(step, rec):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_cfg("report.enabled=false"), cut, hooks=(interrupt,))
    assert [s for s, _ in list_checkpoints(cut)] == [2, 3]
    assert main(["pretrain", "-o", str(cut), "--resume", "--set", "report.enabled=false"]) == 0
    full = read_metrics(run / "metrics.jsonl")
    resumed = read_metrics(cut / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed, strict=True):
        assert (a["loss"], a["grad_norm"], a["lr"], a["tokens"]) == (
            b["loss"],
            b["grad_norm"],
            b["lr"],
            b["tokens"],
        )
    assert a["val_loss"] == b["val_loss"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "unknown config field train.stepz"),
        ("schedule.decay_shape=step", "choose one of ['linear', 'cosine', 'sqrt', 'exp']"),
        ("model.num_heads=3", "model.hidden_size 32 must be divisible by model.num_heads 3"),
        ("model.hidden_size=34", "must be even (rotary embeddings)"),
        ("schedule.decay_steps=9", "exceed train.steps"),
        ("data.builtin=wiki", "data.builtin: 'wiki' is not allowed"),
        ("report.methods=[sma, ema:1.5]", "report.methods: 'ema:1.5'"),
    ],
)
def test_bad_config_values_are_named_on_the_command_line(override, message, tmp_path, capsys):
    args = ["pretrain", "-o", str(tmp_path / "r")]
    for item in [*TINY, override]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and not (tmp_path / "r").exists()


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError):
        tiny_cfg("optim.lr=0")


def test_a_non_empty_run_folder_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    assert (
        main(["pretrain", "-o", str(tmp_path / "r"), *[a for s in TINY for a in ("--set", s)]]) == 2
    )
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "r" / "config.yaml").write_text("seed: 0\n")
    assert main(["pretrain", "-o", str(tmp_path / "r"), "--resume"]) == 2
    assert "no checkpoint-* folder" in capsys.readouterr().err
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


def test_init_from_starts_at_step_zero_from_the_given_weights_with_their_tokenizer(
    tiny_run, tmp_path
):
    run, _ = tiny_run
    out = tmp_path / "ct"
    args = ["pretrain", "-o", str(out), "--init-from", str(run / "checkpoint-6")]
    for s in [*TINY, "train.steps=2", "schedule.decay_steps=0", "report.enabled=false"]:
        args += ["--set", s]
    assert main(args) == 0
    rows = read_metrics(out / "metrics.jsonl")
    scratch = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["tokens"] == 4 * 32
    # Same first batch (same seed); the trained weights start far below a fresh model.
    assert rows[0]["loss"] < scratch[0]["loss"] - 0.25
    assert (out / "checkpoint-2" / "tokenizer.json").read_text() == (
        run / "checkpoint-6" / "tokenizer.json"
    ).read_text()


def test_report_only_mode_prints_the_table_of_a_finished_run(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["pretrain", "--report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| step | tokens | live | SMA | WMA | EMA α=0.1 | EMA α=0.2 |" in out
    assert "Annealed model" in out
