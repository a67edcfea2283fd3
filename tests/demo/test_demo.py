"""pmalopti demo: one smoke-size run, and checks that its report holds the runs' real numbers."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import yaml

from pmalopti.cli import main
from pmalopti.config import ConfigError, load_config
from pmalopti.demo.config import DemoConfig, load_demo_config
from pmalopti.demo.writeup import accuracy_noise, compare
from pmalopti.pma.weights import merge_weights
from pmalopti.runtime.runlog import read_metrics


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One smoke-size demo run through the CLI: (folder, summary dict, REPORT.md text)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--smoke", "--seed", "3", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, (out / "REPORT.md").read_text()


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, float):
        yield obj


# --- the smoke run -----------------------------------------------------------------------------


def test_smoke_demo_writes_report_summary_figures_and_every_stage_folder(demo):
    out, s, report = demo
    for name in ("pretrain.png", "sft.png", "grpo.png", "buckets.png"):
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}" in report
    for run in ("pretrain", "sft-from-latest", "sft-from-pma", "grpo", "grpo-ar-lopti"):
        assert (out / run / "config.yaml").is_file()
    assert (out / "pretrain" / "metrics.jsonl").is_file()
    assert (out / "grpo" / "metrics.jsonl").is_file()
    assert (out / "pma-init" / "config.json").is_file()
    assert s["size"] == "smoke" and s["seed"] == 3
    assert all(math.isfinite(x) for x in _numbers({k: s[k] for k in ("pretrain", "sft", "grpo")}))


def test_live_losses_in_the_table_are_the_pretrain_runs_own_validation_losses(demo):
    out, s, report = demo
    logged = {
        r["step"]: r["val_loss"]
        for r in read_metrics(out / "pretrain/metrics.jsonl")
        if "val_loss" in r
    }
    points = s["pretrain"]["pma"]["points"]
    assert points, "the smoke run must have at least one merge point"
    for p in points:
        # Same blocks, same batching: the report's evaluation of checkpoint-<step> is the loop's.
        assert p["live"] == pytest.approx(logged[p["step"]], rel=1e-5)
        assert f"| {p['step']} |" in report and f"{p['live']:.4f}" in report
    annealed = s["pretrain"]["pma"]["annealed"]
    assert annealed["val_loss"] == pytest.approx(logged[max(logged)], rel=1e-5)


def test_online_merges_match_the_offline_merges_of_the_saved_checkpoints(demo):
    out, s, _ = demo
    pre = s["pretrain"]
    assert pre["online_vs_offline_max_abs_diff"] is not None
    assert pre["online_vs_offline_max_abs_diff"] < 1e-6
    assert s["pma_init"]["online_vs_offline_max_abs_weight_diff"] < 1e-6
    rows = [json.loads(x) for x in (out / "pretrain/online_pma.jsonl").read_text().splitlines()]
    assert rows == pre["online"]
    assert {r["method"] for r in rows} == set(pre["pma"]["methods"])


def test_pma_init_is_the_configured_merge_of_the_last_stable_window(demo):
    out, s, _ = demo
    cfg = s["config"]
    n, every = cfg["pretrain"]["report"]["n"], cfg["pretrain"]["train"]["save_every"]
    last = s["pretrain"]["stable_steps"][1]
    meta = json.loads((out / "pma-init/pmalopti_merge.json").read_text())
    assert [i["step"] for i in meta["inputs"]] == [last - (n - 1 - i) * every for i in range(n)]
    assert [i["weight"] for i in meta["inputs"]] == pytest.approx(merge_weights("sma", n))
    assert s["sft"]["latest"]["init"].endswith(f"checkpoint-{last}")


def test_sft_numbers_come_from_each_runs_eval_file_and_log(demo):
    out, s, report = demo
    for name in ("latest", "pma"):
        run = s["sft"][name]
        assert run["final"] == json.loads((out / f"sft-from-{name}/eval.json").read_text())
        logged = [
            r for r in read_metrics(out / f"sft-from-{name}/metrics.jsonl") if "val_loss" in r
        ]
        assert run["val_curve"] == [[r["step"], r["val_loss"]] for r in logged]
        assert f"{run['final']['val_loss']:.4f}" in report
        assert 0 <= run["final"]["accuracy"] <= 1
        saved = yaml.safe_load((out / f"sft-from-{name}/config.yaml").read_text())
        assert saved["seed"] == 3
        assert saved["data"]["task_kwargs"] == s["config"]["task_kwargs"] == {"max_digits": 2}


def test_grpo_runs_share_their_start_and_seed_and_differ_only_in_ar_and_lopti(demo):
    out, s, _ = demo
    plain, ar = s["grpo"]["grpo"], s["grpo"]["grpo+ar+lopti"]
    c_plain = yaml.safe_load((out / "grpo/config.yaml").read_text())
    c_ar = yaml.safe_load((out / "grpo-ar-lopti/config.yaml").read_text())
    assert (c_plain["algo"]["alpha"], c_plain["algo"]["eta"]) == (0.0, None)
    assert (c_ar["algo"]["alpha"], c_ar["algo"]["eta"]) == (0.3, 0.5)
    for c in (c_plain, c_ar):
        del c["algo"]["alpha"], c["algo"]["eta"], c["output_dir"]
    assert c_plain == c_ar
    assert c_plain["model"]["init_from"] == s["sft"]["pma"]["checkpoint"]
    assert c_plain["task"]["kwargs"] == s["config"]["task_kwargs"]
    # Same weights and seed: the first rollout, before any update, is the same.
    assert plain["first_step_reward"] == ar["first_step_reward"]
    assert plain["before"] == ar["before"]


def test_grpo_accuracies_and_bucket_shares_come_from_the_run_logs(demo):
    out, s, report = demo
    for name, folder in (("grpo", "grpo"), ("grpo+ar+lopti", "grpo-ar-lopti")):
        run = s["grpo"][name]
        log = [json.loads(x) for x in (out / folder / "metrics.jsonl").read_text().splitlines()]
        assert run["after"]["eval/accuracy"] == log[-1]["eval/accuracy"]
        assert run["before"] == json.loads((out / folder / "eval_before.json").read_text())
        assert [c["reward/mean"] for c in run["curve"]] == [r["reward/mean"] for r in log]
        shares = [v for k, v in run["buckets"].items() if k.startswith("diag/token_share/")]
        assert len(shares) == 4 and sum(shares) == pytest.approx(1.0)
        assert run["buckets"]["steps"] == len(log)  # smoke: diagnostics every step
        pct = f"{100 * run['after']['eval/accuracy']:.1f}%"
        assert re.search(rf"\| {re.escape(name)} \|.*{re.escape(pct)}", report)


def test_saved_demo_config_loads_back_to_the_config_that_ran(demo):
    out, s, _ = demo
    cfg = load_config(DemoConfig, out / "demo_config.yaml")
    assert cfg == load_demo_config(None, ["seed=3"], smoke=True)
    assert s["config"]["seed"] == 3


def test_resume_keeps_finished_stages_and_reruns_the_rest_to_the_same_numbers(demo, tmp_path):
    out, s, _ = demo
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    (copy / "stages" / "grpo.json").unlink()  # as if stopped during GRPO
    shutil.rmtree(copy / "grpo-ar-lopti")
    (copy / "REPORT.md").unlink()
    before = (copy / "pretrain" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["demo", "-o", str(copy), "--resume"]) == 0
    again = json.loads((copy / "summary.json").read_text())
    assert (copy / "pretrain" / "metrics.jsonl").stat().st_mtime_ns == before  # kept
    assert again["size"] == "smoke" and again["command"] == s["command"]
    for name, run in s["grpo"].items():
        assert again["grpo"][name]["after"] == run["after"]
        assert again["grpo"][name]["seconds"] != run["seconds"]  # it did run again
    assert again["sft"] == s["sft"] and again["pretrain"] == s["pretrain"]


def test_resume_refuses_a_different_experiment(demo, tmp_path, capsys):
    out, _, _ = demo
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    assert main(["demo", "-o", str(copy), "--resume", "--set", "ar_alpha=0.1"]) == 2
    assert "ar_alpha" in capsys.readouterr().err


# --- refusals and config errors (no training) -------------------------------------------------


def test_demo_refuses_a_non_empty_output_folder_without_force(tmp_path, capsys):
    (tmp_path / "REPORT.md").write_text("old")
    assert main(["demo", "--smoke", "-o", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "REPORT.md").read_text() == "old"


def test_force_never_replaces_a_folder_the_demo_did_not_write(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert main(["demo", "--smoke", "-o", str(tmp_path), "--force"]) == 2
    assert "not written by pmalopti" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    "override, field",
    [
        ("grpo_init=annealed", "grpo_init"),
        ("pma_method=median", "pma_method"),
        ("ar_alpha=1.5", "ar_alpha"),
        ("pretrain.train.save_every=7", "save_every"),
        ("corpus.arithmetic_share=0", "corpus.arithmetic_share"),
        ("sft.data.task=kk", "sft.data.task"),
        ("grpo.task.kwargs={max_digits: 3}", "grpo.task.kwargs"),
        ("nonsense=1", "nonsense"),
    ],
)
def test_bad_demo_settings_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_demo_config(None, [override], smoke=True)


def test_bad_setting_on_the_command_line_exits_2_before_any_work(tmp_path, capsys):
    assert main(["demo", "--smoke", "-o", str(tmp_path / "x"), "--set", "ar_alpha=2"]) == 2
    assert "ar_alpha" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_one_task_setting_reaches_the_corpus_sft_and_grpo():
    cfg = load_demo_config(None, ["task_kwargs={max_digits: 1}"], smoke=True)
    assert cfg.task_kwargs == {"max_digits": 1}
    assert cfg.sft.data.task_kwargs == cfg.grpo.task.kwargs == {}  # filled in when they run


def test_a_config_file_overrides_the_smoke_sizes_and_set_overrides_the_file(tmp_path):
    f = tmp_path / "demo.yaml"
    f.write_text(
        "pretrain:\n  train:\n    steps: 20\nsft_inits: [latest, pma, annealed]\nar_alpha: 0.1\n"
    )
    cfg = load_demo_config(f, ["ar_alpha=0.2"], smoke=True)
    assert cfg.pretrain.train.steps == 20  # the file wins over the smoke preset (16)
    assert cfg.pretrain.train.batch_size == 8  # smoke value the file does not touch
    assert cfg.sft_inits == ["latest", "pma", "annealed"]
    assert cfg.ar_alpha == 0.2
    (tmp_path / "bad.yaml").write_text("pretrain:\n  nonsense: 1\n")
    with pytest.raises(ConfigError, match=r"pretrain\.nonsense"):
        load_demo_config(tmp_path / "bad.yaml", smoke=True)


def test_both_presets_are_valid_and_differ_only_in_sizes():
    full, smoke = load_demo_config(), load_demo_config(smoke=True)
    assert full.pretrain.train.steps > smoke.pretrain.train.steps
    assert (full.ar_alpha, full.lopti_eta, full.pma_method) == (
        smoke.ar_alpha,
        smoke.lopti_eta,
        smoke.pma_method,
    )
    assert full.pretrain.data.builtin == smoke.pretrain.data.builtin


def test_noise_estimate_and_verdicts_are_symmetric_and_honest():
    se = accuracy_noise(0.5, 0.5, 100)
    assert se == pytest.approx(math.sqrt(0.5 / 100))
    assert "within noise" in compare(0.52, 0.5, se, "accuracy")
    assert compare(0.8, 0.5, se, "accuracy").startswith("better")
    assert compare(0.5, 0.8, se, "accuracy").startswith("worse")
    assert compare(1.0, 2.0, 0, "loss", lower_is_better=True).startswith("better")
    assert compare(0.5, 0.5, 0, "accuracy") == "equal in accuracy"
