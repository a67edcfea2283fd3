"""Hostile cases: eval data files and options; kk generate and kk score."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from hostile_harness import Call, Workspace
from hostile_registry import add

# --- eval: data files and options --------------------------------------------------------------

EVAL_DATA = {
    "absent": lambda ws: ws.path("none.jsonl"),
    "empty": lambda ws: ws.write("e.jsonl", ""),
    "not UTF-8": lambda ws: ws.write("b.jsonl", b"\xff\xfe\x00junk\n"),
    "a line that is not JSON": lambda ws: ws.write("j.jsonl", '{"text": "a"}\n{oops\n'),
    "a line that is a list": lambda ws: ws.write("l.jsonl", "[1, 2]\n"),
    "without the text field": lambda ws: ws.write("f.jsonl", '{"body": "a"}\n'),
    "a text field that is a number": lambda ws: ws.write("n.jsonl", '{"text": 5}\n'),
    "JSON nested 100000 deep": lambda ws: ws.write("d.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"),
    "parquet of junk": lambda ws: ws.write("p.parquet", b"PAR1 not really"),
    "an unknown suffix": lambda ws: ws.write("x.csv", "text\nhello\n"),
    "an empty folder": lambda ws: (ws.path("dd").mkdir(), ws.path("dd"))[1],
    "too short for one block": lambda ws: ws.write("s.jsonl", '{"text": "hi"}\n'),
    "a text file of blank lines": lambda ws: ws.write("blank.txt", "\n\n\n"),
}
for how, make in EVAL_DATA.items():
    add(
        f"eval: data {how}",
        lambda ws, make=make: Call(
            ["eval", str(ws.model()), "--data", str(make(ws)), "--json", str(ws.path("out.json"))],
            ws.inputs,
            ws.path("out.json"),
        ),
    )

EVAL_OPTIONS = {
    "--max-length 0": ["--max-length", "0"],
    "--max-length -5": ["--max-length", "-5"],
    "--max-length beyond the context": ["--max-length", "65"],
    "--max-length 10^9": ["--max-length", "1000000000"],
    "--max-blocks -1": ["--max-blocks", "-1"],
    "--batch-size 0": ["--batch-size", "0"],
    "--batch-size -3": ["--batch-size", "-3"],
    "--text-field missing": ["--text-field", "body"],
}
for how, opts in EVAL_OPTIONS.items():
    add(
        f"eval: {how}",
        lambda ws, opts=opts: Call(
            [
                "eval",
                str(ws.model()),
                "--data",
                str(ws.val()),
                *opts,
                "--json",
                str(ws.path("out.json")),
            ],
            ws.inputs,
            ws.path("out.json"),
        ),
    )
add(
    "eval: --json is the data file",
    lambda ws: Call(
        ["eval", str(ws.model()), "--data", str(v := ws.val()), "--json", str(v)], ws.inputs
    ),
)
add(
    "eval: --json is a folder",
    lambda ws: Call(
        ["eval", str(ws.model()), "--data", str(ws.val()), "--json", str(ws.model("m2"))], ws.inputs
    ),
)
add(
    "eval: a run folder without checkpoints",
    lambda ws: Call(
        ["eval", str((ws.path("r").mkdir(), ws.path("r"))[1]), "--data", str(ws.val())], ws.inputs
    ),
)
add(
    "eval: a model without tokenizer files",
    lambda ws: Call(
        [
            "eval",
            str((m := ws.model(), [p.unlink() for p in m.glob("tokenizer*")], m)[-1]),
            "--data",
            str(ws.val()),
        ],
        ws.inputs,
    ),
)
add(
    "eval: one valid checkpoint",
    lambda ws: Call(
        ["eval", str(ws.model()), "--data", str(ws.val()), "--max-length", "32"], ws.inputs
    ),
    "ok",
)
add(
    "eval: two checkpoints of a run",
    lambda ws: Call(
        [
            "eval",
            str((r := ws.run()) / "checkpoint-2"),
            str(r / "checkpoint-4"),
            "--data",
            str(ws.val()),
            "--max-blocks",
            "2",
        ],
        ws.inputs,
    ),
    "ok",
)


# --- kk generate and kk score ------------------------------------------------------------------

GENERATE = {
    "--people 0": ["--people", "0"],
    "--people 1": ["--people", "1"],
    "--people 9": ["--people", "9"],
    "--people -5": ["--people", "-5"],
    "--people-max below --people": ["--people", "4", "--people-max", "3"],
    "--n 0": ["--n", "0"],
    "--n -1": ["--n", "-1"],
    "--n 10^9 with few tries": ["--people", "2", "--n", "1000000000", "--max-tries", "50"],
    "--depth 0": ["--depth", "0"],
    "--depth -1": ["--depth", "-1"],
    "--depth 99": ["--depth", "99"],
    "--width 0": ["--width", "0"],
    "--width 1000": ["--width", "1000"],
    "--test-percent -1": ["--test-percent", "-1"],
    "--test-percent 101": ["--test-percent", "101"],
    "--test-percent 0 for the test split": ["--test-percent", "0", "--split", "test"],
    "--max-tries 0": ["--max-tries", "0"],
    "--max-tries -1": ["--max-tries", "-1"],
}
for how, opts in GENERATE.items():
    add(
        f"kk generate: {how}",
        lambda ws, opts=opts: Call(
            ["kk", "generate", "--n", "3", *opts, "-o", str(ws.path("out.jsonl"))],
            ws.inputs,
            ws.path("out.jsonl"),
        ),
    )
add(
    "kk generate: output suffix .txt",
    lambda ws: Call(
        ["kk", "generate", "--n", "3", "-o", str(ws.path("out.txt"))], ws.inputs, ws.path("out.txt")
    ),
)
add(
    "kk generate: output exists",
    lambda ws: Call(["kk", "generate", "--n", "3", "-o", str(ws.puzzles("old.jsonl"))], ws.inputs),
)
add(
    "kk generate: output a folder",
    lambda ws: Call(
        [
            "kk",
            "generate",
            "--n",
            "3",
            "-o",
            str((ws.path("d.jsonl").mkdir(), ws.path("d.jsonl"))[1]),
            "--force",
        ],
        ws.inputs,
    ),
)
add(
    "kk generate: three puzzles",
    lambda ws: Call(
        ["kk", "generate", "--n", "3", "--people", "2", "-o", str(ws.path("new.jsonl"))], ws.inputs
    ),
    "ok",
)


def _puzzle_rows(ws: Workspace) -> list[dict]:
    return [json.loads(line) for line in ws.puzzles("tmp.jsonl").read_text().splitlines()]


def _puzzles_with(ws: Workspace, mutate: Callable[[dict], None]) -> Path:
    rows = _puzzle_rows(ws)
    mutate(rows[0])
    ws.path("tmp.jsonl").unlink()
    return ws.write("bad.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


PUZZLES = {
    "absent": lambda ws: ws.path("none.jsonl"),
    "empty": lambda ws: ws.write("e.jsonl", ""),
    "not UTF-8": lambda ws: ws.write("b.jsonl", b"\xff\xfe"),
    "a line that is not JSON": lambda ws: ws.write("j.jsonl", "{oops\n"),
    "a row that is a list": lambda ws: ws.write("l.jsonl", "[1]\n"),
    "parquet of junk": lambda ws: ws.write("p.parquet", b"PAR1junk"),
    "an unknown suffix": lambda ws: ws.write("p.csv", "a,b\n"),
    "a folder": lambda ws: (ws.path("pz").mkdir(), ws.path("pz"))[1],
    "without names": lambda ws: _puzzles_with(ws, lambda r: r.pop("names")),
    "names a string": lambda ws: _puzzles_with(ws, lambda r: r.update(names="Ada")),
    "names of numbers": lambda ws: _puzzles_with(ws, lambda r: r.update(names=[1, 2])),
    "solution a string": lambda ws: _puzzles_with(ws, lambda r: r.update(solution="yes")),
    "solution too short": lambda ws: _puzzles_with(ws, lambda r: r.update(solution=[True])),
    "solution contradicting the statements": lambda ws: _puzzles_with(
        ws, lambda r: r.update(solution=[not x for x in r["solution"]])
    ),
    "statements unparsable": lambda ws: _puzzles_with(ws, lambda r: r.update(statements="((")),
    "statements nested 10000 deep": lambda ws: _puzzles_with(
        ws,
        lambda r: r.update(
            statements="(" + "('not', " * 10_000 + "('lying', 0)" + ")" * 10_000 + ",)"
        ),
    ),
    "statements a megabyte": lambda ws: _puzzles_with(
        ws, lambda r: r.update(statements="(" * 1_000_000)
    ),
    "statements naming person 99": lambda ws: _puzzles_with(
        ws, lambda r: r.update(statements=str(tuple(("lying", 99) for _ in r["names"])))
    ),
    "statements a number": lambda ws: _puzzles_with(ws, lambda r: r.update(statements=5)),
}
for how, make in PUZZLES.items():
    add(
        f"kk score: puzzles {how}",
        lambda ws, make=make: Call(
            [
                "kk",
                "score",
                "--data",
                str(make(ws)),
                "--responses",
                str(ws.write("r.jsonl", '"x"\n' * 6)),
                "--json",
                str(ws.path("out.json")),
            ],
            ws.inputs,
            ws.path("out.json"),
        ),
    )

RESPONSES = {
    "absent": None,
    "empty": "",
    "not UTF-8": b"\xff\xfe\n",
    "a line that is not JSON": '"a"\n{oops\n',
    "a line that is a number": "5\n",
    "a line that is a list": "[1]\n",
    "row a boolean": '{"row": true, "response": "x"}\n',
    "row negative": '{"row": -1, "response": "x"}\n',
    "row past the data": '{"row": 6, "response": "x"}\n',
    "row a float": '{"row": 1.0, "response": "x"}\n',
    "row a string": '{"row": "1", "response": "x"}\n',
    "row 10^30": '{"row": 1000000000000000000000000000000, "response": "x"}\n',
    "response field missing": '{"text": "x"}\n',
    "response a number": '{"response": 5}\n',
    "5 responses for 6 puzzles": '"x"\n' * 5,
    "7 responses for 6 puzzles": '"x"\n' * 7,
    "JSON nested 100000 deep": "[" * 100_000 + "]" * 100_000 + "\n",
}
for how, text in RESPONSES.items():
    add(
        f"kk score: responses {how}",
        lambda ws, text=text: Call(
            [
                "kk",
                "score",
                "--data",
                str(ws.puzzles()),
                "--responses",
                str(ws.path("none.jsonl") if text is None else ws.write("r.jsonl", text)),
                "--json",
                str(ws.path("out.json")),
            ],
            ws.inputs,
            ws.path("out.json"),
        ),
    )
add(
    "kk score: --json is the puzzles file",
    lambda ws: Call(
        [
            "kk",
            "score",
            "--data",
            str(p := ws.puzzles()),
            "--responses",
            str(ws.write("r.jsonl", '"x"\n' * 6)),
            "--json",
            str(p),
        ],
        ws.inputs,
    ),
)
add(
    "kk score: --json is the responses file",
    lambda ws: Call(
        [
            "kk",
            "score",
            "--data",
            str(ws.puzzles()),
            "--responses",
            str(r := ws.write("r.jsonl", '"x"\n' * 6)),
            "--json",
            str(r),
        ],
        ws.inputs,
    ),
)
add(
    "kk score: --json is a folder",
    lambda ws: Call(
        [
            "kk",
            "score",
            "--data",
            str(ws.puzzles()),
            "--responses",
            str(ws.write("r.jsonl", '"x"\n' * 6)),
            "--json",
            str(ws.model()),
        ],
        ws.inputs,
    ),
)
add(
    "kk score: one response per puzzle",
    lambda ws: Call(
        [
            "kk",
            "score",
            "--data",
            str(ws.puzzles()),
            "--responses",
            str(ws.write("r.jsonl", '"<think></think><answer>x</answer>"\n' * 6)),
        ],
        ws.inputs,
    ),
    "ok",
)
add(
    "kk score: a megabyte of tag soup",
    lambda ws: Call(
        [
            "kk",
            "score",
            "--data",
            str(ws.puzzles()),
            "--responses",
            str(ws.write("r.jsonl", json.dumps("<answer>" * 100_000) + "\n" + '"x"\n' * 5)),
        ],
        ws.inputs,
    ),
    "ok",
)
add(
    "kk score: explicit rows for a subset",
    lambda ws: Call(
        [
            "kk",
            "score",
            "--data",
            str(ws.puzzles()),
            "--responses",
            str(ws.write("r.jsonl", '{"row": 2, "response": "x"}\n')),
        ],
        ws.inputs,
    ),
    "ok",
)
