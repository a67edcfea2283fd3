"""Hostile cases: recover runs, metrics logs and options."""

from __future__ import annotations

import json
from pathlib import Path

from hostile_harness import Call, Workspace
from hostile_registry import add

# --- recover -----------------------------------------------------------------------------------


def _run_with(
    ws: Workspace, *, metrics: str | bytes | None = None, config: str | None = None
) -> Path:
    run = ws.run()
    if metrics is not None:
        (run / "metrics.jsonl").write_bytes(
            metrics.encode() if isinstance(metrics, str) else metrics
        )
    if config is not None:
        (run / "config.yaml").write_text(config)
    return run


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


RECOVER_RUNS = {
    "run folder absent": lambda ws: ws.path("nope"),
    "run folder empty": lambda ws: (ws.path("r").mkdir(), ws.path("r"))[1],
    "metrics absent": lambda ws: (r := ws.run(), (r / "metrics.jsonl").unlink(), r)[-1],
    "metrics empty": lambda ws: _run_with(ws, metrics=""),
    "metrics not JSON": lambda ws: _run_with(ws, metrics="{oops\n"),
    "metrics not UTF-8": lambda ws: _run_with(ws, metrics=b"\xff\xfe\n"),
    "metrics rows that are lists": lambda ws: _run_with(ws, metrics="[1]\n[2]\n"),
    "metrics step a string": lambda ws: _run_with(
        ws, metrics=_lines([{"step": "one", "loss": 1.0}])
    ),
    "metrics step missing": lambda ws: _run_with(ws, metrics=_lines([{"loss": 1.0}])),
    "metrics loss a string": lambda ws: _run_with(
        ws, metrics=_lines([{"step": 1, "loss": "high"}])
    ),
    "metrics loss a list": lambda ws: _run_with(ws, metrics=_lines([{"step": 1, "loss": [1]}])),
    "metrics all NaN": lambda ws: _run_with(
        ws, metrics="".join(f'{{"step": {i}, "loss": NaN}}\n' for i in range(1, 15))
    ),
    "metrics without a spike": lambda ws: _run_with(
        ws, metrics=_lines([{"step": i, "loss": 3.0 - i / 10} for i in range(1, 15)])
    ),
    "metrics nested 100000 deep": lambda ws: _run_with(
        ws, metrics="[" * 100_000 + "]" * 100_000 + "\n"
    ),
    "config.yaml not YAML": lambda ws: _run_with(ws, config="a: [unclosed\n"),
    "config.yaml a list": lambda ws: _run_with(ws, config="- 1\n- 2\n"),
    "config.yaml warmup a string": lambda ws: _run_with(
        ws, config="schedule:\n  warmup_steps: soon\n"
    ),
    "config.yaml schedule a list": lambda ws: _run_with(ws, config="schedule: [1]\n"),
    "config.yaml an alias bomb": lambda ws: _run_with(
        ws,
        config="a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nschedule: {warmup_steps: x}\n",
    ),
}
for how, make in RECOVER_RUNS.items():
    # an unreadable config.yaml only means "schedule unknown": spikes are judged from step 0
    expect = "ok" if how.startswith("config.yaml") else "error"
    add(
        f"recover: {how}",
        lambda ws, make=make, expect=expect: Call(
            ["recover", "--run-dir", str(make(ws)), "--last", "2", "-o", str(ws.path("out"))],
            ws.inputs,
            ws.path("out") if expect == "error" else None,
        ),
        expect,
    )
RECOVER_OPTIONS = {
    "--last 0": ["--last", "0"],
    "--last -2": ["--last", "-2"],
    "--last 99": ["--last", "99"],
    "--spike-step 1": ["--last", "1", "--spike-step", "1"],
    "--spike-step -5": ["--last", "1", "--spike-step", "-5"],
    "--factor 1": ["--last", "2", "--factor", "1"],
    "--factor NaN": ["--last", "2", "--factor", "nan"],
    "--factor -2": ["--last", "2", "--factor", "-2"],
    "--window 0": ["--last", "2", "--window", "0"],
    "--method bogus": ["--last", "2", "--method", "bogus"],
    "--method ema:5": ["--last", "2", "--method", "ema:5"],
    "--method ema:x": ["--last", "2", "--method", "ema:x"],
}
for how, opts in RECOVER_OPTIONS.items():
    add(
        f"recover: {how}",
        lambda ws, opts=opts: Call(
            ["recover", "--run-dir", str(ws.run()), *opts, "-o", str(ws.path("out"))],
            ws.inputs,
            ws.path("out"),
        ),
    )
add(
    "recover: output is the run folder",
    lambda ws: Call(
        ["recover", "--run-dir", str(r := ws.run()), "--last", "2", "-o", str(r), "--force"],
        ws.inputs,
    ),
)
add(
    "recover: output inside the run folder",
    lambda ws: Call(
        ["recover", "--run-dir", str(r := ws.run()), "--last", "2", "-o", str(r / "merged")],
        ws.inputs,
        r / "merged",
    ),
    "ok",
)
add(
    "recover: the spike found and merged",
    lambda ws: Call(
        ["recover", "--run-dir", str(ws.run()), "--last", "2", "-o", str(ws.path("out"))], ws.inputs
    ),
    "ok",
)
