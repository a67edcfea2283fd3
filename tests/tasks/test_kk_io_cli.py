"""K&K files, the Task object and the `pmalopti kk` command."""

from __future__ import annotations

import glob
import json

import pyarrow.parquet as pq
import pytest

from pmalopti.cli import main
from pmalopti.tasks import get_task, trl_reward
from pmalopti.tasks.base import chat_prompt
from pmalopti.tasks.kk import (
    PuzzleError,
    check_puzzle,
    generate_records,
    load_puzzles,
    write_puzzles,
)
from pmalopti.tasks.kk.render import SYSTEM_PROMPT

KK_FILES = sorted(glob.glob("/work/shared/data/kk/*.parquet"))
PUBLISHED_COLUMNS = {"quiz", "names", "solution", "solution_text_format", "statements", "prompt"}
needs_data = pytest.mark.skipif(not KK_FILES, reason="published K&K data not found")


@needs_data
def test_the_chat_prompt_reproduces_every_published_prompt_exactly():
    task = get_task("kk")
    for f in KK_FILES:
        for r in load_puzzles(f):
            assert task.prompt(r, chat=True) == r["prompt"][0]["content"]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_written_puzzles_read_back_identically_with_the_published_columns(tmp_path, suffix):
    recs = generate_records(40, people=3, people_max=5, seed=1)
    path = write_puzzles(recs, tmp_path / f"p{suffix}")
    back = load_puzzles(path)
    assert back == recs
    assert set(back[0]) >= PUBLISHED_COLUMNS
    assert back[0]["prompt"][0]["content"].endswith("<|im_start|>assistant\n<think>")
    assert back[0]["prompt"][0]["content"] == chat_prompt(
        SYSTEM_PROMPT, back[0]["quiz"], prefill="<think>"
    )


def test_writing_refuses_to_overwrite_without_force_and_leaves_no_temp_file(tmp_path):
    recs = generate_records(3, seed=0)
    out = write_puzzles(recs, tmp_path / "a.jsonl")
    with pytest.raises(FileExistsError):
        write_puzzles(recs[:1], out)
    write_puzzles(recs[:1], out, force=True)
    assert len(load_puzzles(out)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD_ROW = {
    "names": ["Ada", "Bruno"],
    "statements": "(('telling-truth', 1), ('and', ('lying', 0), ('telling-truth', 1)))",
    "solution": [False, False],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"names": None}, "row 1: missing field 'names'"),
        ({"statements": None}, "row 1: missing field 'statements'"),
        ({"statements": "(('lying', 0)"}, "row 1: field 'statements': expected"),
        (
            {"statements": "(('lying', 5), ('lying', 0))"},
            "row 1: field 'statements': statement 0: person 5",
        ),
        ({"names": ["Ada"]}, "row 1: field 'statements': expected 1 statements"),
        ({"names": [f"P{i}" for i in range(20)]}, "row 1: field 'names' has 20 people"),
        ({"names": ["Ada", "Ada"]}, "row 1: field 'names' must hold distinct"),
        ({"solution": [True, False]}, "row 1: field 'solution' .* contradicts"),
        ({"solution": [1, 0]}, "row 1: field 'solution' must be 2 booleans"),
        (
            {"statements": "(('telling-truth', 0), ('telling-truth', 1))"},
            "row 1: field 'statements' has 4 consistent assignments",
        ),
    ],
)
def test_bad_rows_raise_errors_naming_the_row_and_field(tmp_path, change, message):
    bad = {**GOOD_ROW, **change}
    bad = {k: v for k, v in bad.items() if v is not None}
    path = _jsonl(tmp_path / "bad.jsonl", [GOOD_ROW, bad])
    with pytest.raises(PuzzleError, match=message):
        load_puzzles(path)


def test_a_row_without_solution_is_solved_and_a_non_json_line_is_reported(tmp_path):
    row = {k: v for k, v in GOOD_ROW.items() if k != "solution"}
    assert check_puzzle(row, "row 0")["solution"] == [False, False]
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_puzzles(path)
    with pytest.raises(ValueError, match="unsupported file type"):
        load_puzzles(_jsonl(tmp_path / "x.csv", [GOOD_ROW]))


def test_prompt_plus_target_is_a_complete_solution_scoring_3_for_generated_puzzles():
    for prefilled in (True, False):
        task = get_task("kk", people=2, people_max=8, think_prefilled=prefilled)
        for s in task.samples("train", n=40, seed=4):
            prompt, target = task.prompt(s), task.target(s)
            assert prompt.endswith("<think>") == prefilled
            assert task.reward(target, s) == 3.0 and task.is_correct(target, s)
            assert task.difficulty(s) == len(s["names"])
            assert all(f"{n}:" in prompt for n in s["names"])


def test_plain_prompt_and_target_stay_compact_for_tiny_models():
    task = get_task("kk", people=8, people_max=8)
    longest = max(len(task.prompt(s) + task.target(s)) for s in task.samples(n=50))
    assert longest < 2500  # characters; a byte-level BPE needs fewer tokens than that


@needs_data
def test_task_reads_a_published_file_and_a_seeded_subset_in_file_order():
    task = get_task("kk", path=KK_FILES[0])
    all_rows = task.samples()
    sub = task.samples(n=10, seed=3)
    assert len(all_rows) == 100 and len(sub) == 10
    idx = [all_rows.index(r) for r in sub]
    assert idx == sorted(idx) and sub == task.samples(n=10, seed=3)
    r = all_rows[0]
    assert task.reward(f" ok </think><answer>{r['solution_text_format']}</answer>", r) == 3.0


def test_trl_adapter_scores_kk_completions_from_dataset_columns():
    task = get_task("kk")
    rows = task.samples(n=2, seed=0)
    fn = trl_reward(task)
    good = task.target(rows[0])
    rewards = fn(
        [good, "nonsense"],
        prompts=["p", "p"],
        names=[rows[0]["names"], rows[1]["names"]],
        solution=[rows[0]["solution"], rows[1]["solution"]],
        statements=[rows[0]["statements"], rows[1]["statements"]],
    )
    assert rewards == [3.0, -3.0]


def test_cli_generate_writes_the_requested_puzzles_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "train.parquet"
    argv = ["kk", "generate", "--people", "3", "--people-max", "5", "--n", "60", "-o", str(out)]
    assert main(argv) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 60 and {len(r["names"]) for r in rows} == {3, 4, 5}
    assert set(rows[0]) >= PUBLISHED_COLUMNS
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--seed", "1", "--force"]) == 0
    assert pq.read_table(out).to_pylist() != rows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--people", "9"], "people: need 2 <= people"),
        (["--people", "2", "--n", "1000", "--max-tries", "300"], "cannot produce 1000 unique"),
        (["--depth", "1"], "depth"),
    ],
)
def test_cli_generate_reports_bad_requests_in_one_line(tmp_path, capsys, args, message):
    rc = main(["kk", "generate", *args, "-o", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("pmalopti kk: error:")
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_score_prints_accuracy_per_number_of_people(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    recs = generate_records(30, people=3, people_max=4, seed=2)
    write_puzzles(recs, data)
    task = get_task("kk")
    lines = []
    for i, r in enumerate(recs):  # correct on even rows, junk on odd ones
        lines.append({"response": task.target(r) if i % 2 == 0 else "no idea"})
    lines.append({"row": 0, "response": task.target(recs[0])})  # a second sample for row 0
    _jsonl(tmp_path / "r.jsonl", lines)
    summary = tmp_path / "s.json"
    argv = ["kk", "score", "--data", str(data), "--responses", str(tmp_path / "r.jsonl")]
    assert main([*argv, "--json", str(summary)]) == 0
    table = json.loads(summary.read_text())
    n3 = sum(len(r["names"]) == 3 for r in recs)
    correct3 = sum(len(r["names"]) == 3 and i % 2 == 0 for i, r in enumerate(recs))
    first3 = len(recs[0]["names"]) == 3
    assert table["3"]["n"] == n3 + first3
    assert table["3"]["accuracy"] == pytest.approx((correct3 + first3) / (n3 + first3))
    assert table["all"]["n"] == 31
    assert table["all"]["accuracy"] == pytest.approx(16 / 31)
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["people", "n", "accuracy", "mean_reward", "format_ok"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["3", "4", "all"]


def test_cli_score_rejects_responses_pointing_past_the_data(tmp_path, capsys):
    data = write_puzzles(generate_records(2, seed=0), tmp_path / "d.jsonl")
    _jsonl(tmp_path / "r.jsonl", [{"row": 5, "response": "x"}])
    rc = main(["kk", "score", "--data", str(data), "--responses", str(tmp_path / "r.jsonl")])
    assert rc == 2 and "line 1: row 5 is out of range" in capsys.readouterr().err


def test_cli_score_refuses_fewer_responses_than_puzzles(tmp_path, capsys):
    data = write_puzzles(generate_records(6, people=2, seed=0), tmp_path / "d.jsonl")
    _jsonl(tmp_path / "r.jsonl", ["x"] * 5)
    rc = main(["kk", "score", "--data", str(data), "--responses", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds 5 responses without a 'row' field for the 6 puzzles" in err
