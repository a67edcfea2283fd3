"""Hostile cases: training commands' configs, overrides and outputs."""

from __future__ import annotations

from hostile_harness import Call, Workspace
from hostile_registry import add

# --- training commands: configs, overrides, outputs --------------------------------------------

BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
CONFIGS = {
    "absent": None,
    "empty": "",
    "not YAML": "a: [unclosed\n",
    "a YAML list": "- 1\n",
    "a YAML scalar": "42\n",
    "not UTF-8": b"\xff\xfe\n",
    "an unknown key": "nonsense: 1\n",
    "an unknown nested key": "optim:\n  nonsense: 1\n",
    "a section that is a number": "optim: 5\n",
    "a wrong type": "seed: lots\n",
    "an integer of 400 digits": "seed: " + "9" * 400 + "\n",
    "nested 200 deep": "a: " + "[" * 200 + "]" * 200 + "\n",
    "a Python object tag": "seed: !!python/object/apply:os.system ['true']\n",
}
for cmd in ("pretrain", "sft", "grpo"):
    out_flag = "--output-dir" if cmd == "grpo" else "-o"
    for how, text in CONFIGS.items():
        if how == "empty":
            continue  # an empty config means all defaults: a real (slow) run
        add(
            f"{cmd}: config {how}",
            lambda ws, text=text, cmd=cmd, out_flag=out_flag: Call(
                [
                    cmd,
                    "--config",
                    str(ws.path("c.yaml") if text is None else ws.write("c.yaml", text)),
                    out_flag,
                    str(ws.path("out")),
                ],
                ws.inputs,
                ws.path("out"),
            ),
        )
    add(
        f"{cmd}: config a folder",
        lambda ws, cmd=cmd, out_flag=out_flag: Call(
            [cmd, "--config", str(ws.model()), out_flag, str(ws.path("out"))],
            ws.inputs,
            ws.path("out"),
        ),
    )

SET_MATCH = {
    "lr NaN": "lr",
    "lr inf": "lr",
    "lr 0": "lr",
    "lr negative": "lr",
    "steps negative": "steps",
    "seed negative": "seed",
    "seed 2^70": "seed",
    "threads 100000": "threads",
    "betas of three": "beta",
}
SETS = {
    "without '='": ["seed"],
    "an unknown field": ["nonsense=1"],
    "an unknown nested field": ["optim.nonsense=1"],
    "a section": ["optim=1"],
    "a wrong type": ["seed=lots"],
    "a list for a number": ["seed=[1,2]"],
    "an empty key": ["=1"],
    "lr NaN": ["optim.lr=nan"],
    "lr inf": ["optim.lr=inf"],
    "lr 0": ["optim.lr=0"],
    "lr negative": ["optim.lr=-1"],
    "steps negative": ["train.steps=-1"],
    "seed negative": ["seed=-1"],
    "seed 2^70": ["seed=1180591620717411303424"],
    "threads 100000": ["train.threads=100000"],
    "betas of three": ["optim.betas=[0.9,0.99,0.999]"],
    "an alias bomb": ["seed=" + BOMB.replace("\n", "; ")],
}


def _init(ws: Workspace, cmd: str) -> list[str]:
    return ["--init-from", str(ws.model("init"))] if cmd == "sft" else []


# Tiny sizes, so that a case the command wrongly accepts finishes in seconds instead of training.
SMALL = {
    "pretrain": [
        "schedule.warmup_steps=0",
        "train.steps=2",
        "train.batch_size=2",
        "data.num_docs=20",
        "data.block_size=16",
        "data.max_val_blocks=1",
        "train.save_every=1",
        "train.eval_every=1",
        "report.enabled=false",
        "model.hidden_size=16",
        "model.num_layers=1",
        "train.progress=false",
    ],
    "sft": [
        "schedule.warmup_steps=0",
        "train.steps=2",
        "train.batch_size=2",
        "data.num_train=4",
        "data.num_val=2",
        "data.eval_generate=0",
        "train.save_every=1",
        "train.eval_every=1",
        "train.progress=false",
    ],
    "grpo": [
        "train.steps=1",
        "rollout.prompts_per_step=1",
        "rollout.group_size=2",
        "rollout.max_new_tokens=2",
        "algo.minibatch_size=2",
        "algo.micro_batch_size=2",
        "task.train_size=4",
        "task.eval_size=1",
        "train.eval_every=0",
        "train.sample_every=0",
        "train.progress=false",
        "model.tiny.hidden_size=16",
        "model.tiny.num_layers=1",
    ],
}
for cmd in ("pretrain", "sft", "grpo"):
    out_flag = "--output-dir" if cmd == "grpo" else "-o"
    for how, sets in SETS.items():
        sets = [
            *(x for x in SMALL[cmd] if x.split("=")[0] not in {y.split("=")[0] for y in sets}),
            *sets,
        ]
        add(
            f"{cmd}: --set {how}",
            lambda ws, sets=sets, cmd=cmd, out_flag=out_flag, how=how: Call(
                [
                    cmd,
                    *_init(ws, cmd),
                    *[a for s in sets for a in ("--set", s)],
                    out_flag,
                    str(ws.path("out")),
                ],
                ws.inputs,
                ws.path("out"),
                isolate=how.startswith("threads") and cmd != "grpo",  # it segfaulted the process
            ),
            match=SET_MATCH.get(how, ""),
        )
    add(
        f"{cmd}: the tiny config the --set cases start from",
        lambda ws, cmd=cmd, out_flag=out_flag: Call(
            [
                cmd,
                *_init(ws, cmd),
                *[a for s in SMALL[cmd] for a in ("--set", s)],
                out_flag,
                str(ws.path("out")),
            ],
            ws.inputs,
        ),
        "ok",
    )
add(
    "grpo: task kwargs an alias bomb",
    lambda ws: Call(
        [
            "grpo",
            "--config",
            str(ws.write("c.yaml", BOMB + "task:\n  kwargs: {x: *f}\n")),
            "--output-dir",
            str(ws.path("out")),
        ],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "grpo: task.train_path absent",
    lambda ws: Call(
        [
            "grpo",
            "--set",
            "task.name=math",
            "--set",
            f"task.train_path={ws.path('none.jsonl')}",
            "--output-dir",
            str(ws.path("out")),
        ],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "grpo: task.name bogus",
    lambda ws: Call(
        ["grpo", "--set", "task.name=bogus", "--output-dir", str(ws.path("out"))],
        ws.inputs,
        ws.path("out"),
    ),
)
MATH_FILES = {
    "not UTF-8": ("m.jsonl", b"\xff\xfe\n"),
    "a line that is not JSON": ("m.jsonl", b'{"problem": "1+1", "answer": "2"}\n{oops\n'),
    "a row without an answer": ("m.jsonl", b'{"problem": "1+1"}\n'),
    "a row that is a list": ("m.jsonl", b"[1]\n"),
    "a .json that is not a list": ("m.json", b'{"problem": "1+1"}'),
    "JSON nested 100000 deep": ("m.json", b"[" * 100_000 + b"]" * 100_000),
    "an unknown suffix": ("m.csv", b"problem,answer\n1+1,2\n"),
}
for how, (name, data) in MATH_FILES.items():
    add(
        f"grpo: math task file {how}",
        lambda ws, name=name, data=data: Call(
            [
                "grpo",
                "--set",
                "task.name=math",
                "--set",
                f"task.train_path={ws.write(name, data)}",
                "--output-dir",
                str(ws.path("out")),
            ],
            ws.inputs,
            ws.path("out"),
        ),
    )
add(
    "grpo: --resume without a run",
    lambda ws: Call(
        ["grpo", "--resume", "--output-dir", str(ws.path("out"))], ws.inputs, ws.path("out")
    ),
)
add(
    "pretrain: --resume without a run",
    lambda ws: Call(["pretrain", "--resume", "-o", str(ws.path("out"))], ws.inputs, ws.path("out")),
)
add(
    "sft: --resume without a run",
    lambda ws: Call(["sft", "--resume", "-o", str(ws.path("out"))], ws.inputs, ws.path("out")),
)
add(
    "pretrain: --report of a folder without checkpoints",
    lambda ws: Call(
        ["pretrain", "--report", str((ws.path("r").mkdir(), ws.path("r"))[1])], ws.inputs
    ),
)
add(
    "pretrain: data.path absent",
    lambda ws: Call(
        [
            "pretrain",
            "--set",
            "data.builtin=",
            "--set",
            f"data.path={ws.path('none.txt')}",
            "-o",
            str(ws.path("out")),
        ],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "sft: data.task bogus",
    lambda ws: Call(
        ["sft", "--set", "data.task=bogus", "-o", str(ws.path("out"))], ws.inputs, ws.path("out")
    ),
)
for cmd in ("pretrain", "sft", "grpo"):
    out_flag = "--output-dir" if cmd == "grpo" else "-o"
    # fail right after any deletion (a missing data file), so nothing long runs either way
    bad = {
        "pretrain": ["--set", "data.builtin=", "--set", "data.path=/nonexistent/x.txt"],
        "sft": ["--set", "data.task=bogus"],
        "grpo": ["--set", "task.name=bogus"],
    }[cmd]
    add(
        f"{cmd}: output the working folder, forced",
        lambda ws, cmd=cmd, out_flag=out_flag, bad=bad: Call(
            [cmd, *bad, out_flag, ".", "--force"], ws.inputs, cwd=ws.root
        ),
    )
    add(
        f"{cmd}: output a foreign folder, forced",
        lambda ws, cmd=cmd, out_flag=out_flag, bad=bad: Call(
            [
                cmd,
                *bad,
                out_flag,
                str((ws.write("data/notes.txt", "mine"), ws.path("data"))[1]),
                "--force",
            ],
            ws.inputs,
        ),
    )
    add(
        f"{cmd}: output an existing file",
        lambda ws, cmd=cmd, out_flag=out_flag: Call(
            [cmd, out_flag, str(ws.write("f.txt", "keep"))], ws.inputs
        ),
    )
add(
    "demo: output the working folder, forced",
    lambda ws: Call(
        ["demo", "--smoke", "--set", "nonsense=1", "-o", ".", "--force"], ws.inputs, cwd=ws.root
    ),
)
add(
    "demo: --set an unknown field",
    lambda ws: Call(
        ["demo", "--smoke", "--set", "nonsense=1", "-o", str(ws.path("out"))],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "demo: config not YAML",
    lambda ws: Call(
        ["demo", "--config", str(ws.write("c.yaml", "a: [x\n")), "-o", str(ws.path("out"))],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "demo: output a non-empty folder",
    lambda ws: Call(
        ["demo", "--smoke", "-o", str((ws.write("d/notes.txt", "mine"), ws.path("d"))[1])],
        ws.inputs,
    ),
)
