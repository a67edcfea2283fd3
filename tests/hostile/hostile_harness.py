"""Run a `pmalopti` command in-process on hostile inputs and record exactly what it did.

`run_call` hashes every input tree before and after, captures stdout and stderr (logging is
re-pointed at the capture for each call), turns an uncaught exception into a recorded traceback,
stops a call that hangs, and notes whether anything appeared at the output path. `Workspace`
builds the valid inputs (a tiny model folder, a run folder, puzzles, a text file) from templates
made once per process, for a case to break.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

SECRET = b"TOPSECRET-hostile-corpus\n"
"""Content of a file outside every input: it must never be read into an output or a message."""
SECRET_MARKERS = ("TOPSECRET", str(struct.unpack("<Q", SECRET[:8])[0]))
HANG_S = 180
UNCLEAR = (
    "Overflow when unpacking",
    "codec can't decode",
    "Expecting value: line 1 column 1",
    "sentencepiece",
    "object has no attribute",
    "object is not",
    "int too large",
    "maximum recursion depth",
)
"""Phrases of library errors that say nothing unless the line also names the file (a path)."""


@dataclasses.dataclass
class Call:
    argv: list[str]
    inputs: list[Path]
    output: Path | None = None
    cwd: Path | None = None
    isolate: bool = False
    """run in a child process (for inputs that could crash this one, e.g. a segfault)"""


@dataclasses.dataclass
class Outcome:
    rc: int | None
    stdout: str
    stderr: str
    error: str | None
    """an uncaught exception's traceback (None when the command returned or exited)"""
    seconds: float
    inputs_changed: list[str]
    output_written: bool
    leaked: bool

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def kind(self) -> str:
        """'clear error', 'handled', 'traceback', 'unclear error', 'data lost' or 'leak'."""
        if self.inputs_changed:
            return "data lost"
        if self.leaked:
            return "leak"
        if self.error is not None or "Traceback (most recent call last)" in self.stderr:
            return "traceback"
        if self.rc == 0:
            return "handled"
        if (
            self.rc == 2
            and len(self.lines) == 1
            and not self.output_written
            and not (any(p in self.lines[0] for p in UNCLEAR) and "/" not in self.lines[0])
        ):
            return "clear error"
        return "unclear error"


class Hang(BaseException):
    """Raised by the alarm in a call that runs past `HANG_S`."""


def tree_state(paths: Sequence[Path], skip: Path | None = None) -> dict[str, str]:
    """path -> content hash (files), link target (symlinks) or 'dir', for every input tree
    (`skip`, the output, excluded: writing a merge into a run folder is allowed)."""
    state: dict[str, str] = {}

    def visit(p: Path) -> None:
        if skip is not None and p == skip:
            return
        if p.is_symlink():
            state[str(p)] = "link:" + os.readlink(p)
        elif p.is_dir():
            state[str(p)] = "dir"
            for child in sorted(p.iterdir()):
                visit(child)
        elif p.is_file():
            state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.exists():
            state[str(p)] = "special"

    for p in paths:
        visit(Path(p))
    return state


def _alarm(signum, frame):
    raise Hang(f"no answer within {HANG_S} s")


def _run_here(
    call: Call, stdout: io.StringIO, stderr: io.StringIO
) -> tuple[int | None, str | None]:
    from pmalopti.cli import main

    rc, error = None, None
    logging.root.handlers.clear()  # main's basicConfig then writes to this call's stderr
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            contextlib.chdir(call.cwd or Path.cwd()),
        ):
            try:
                rc = main(call.argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                error = traceback.format_exc(limit=-3)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        logging.root.handlers.clear()
    return rc, error


def _run_child(
    call: Call, stdout: io.StringIO, stderr: io.StringIO
) -> tuple[int | None, str | None]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pmalopti", *call.argv], cwd=call.cwd, env=env,
            capture_output=True, text=True, timeout=HANG_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"Hang: no answer within {HANG_S} s"
    stdout.write(proc.stdout)
    stderr.write(proc.stderr)
    if proc.returncode < 0:
        return None, f"Crash: killed by signal {-proc.returncode}"
    return proc.returncode, None


def run_call(call: Call) -> Outcome:
    before = tree_state(call.inputs, call.output)
    out_existed = call.output is not None and (call.output.exists() or call.output.is_symlink())
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    if call.isolate:
        rc, error = _run_child(call, stdout, stderr)
    else:
        rc, error = _run_here(call, stdout, stderr)
    seconds = time.perf_counter() - start
    after = tree_state(call.inputs, call.output)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    written = False
    if call.output is not None and not out_existed:
        written = call.output.exists() or any(
            p.name.startswith((f".tmp-{call.output.name}", f".old-{call.output.name}"))
            for p in call.output.parent.glob(".*")
        )
    text = stdout.getvalue() + stderr.getvalue()
    leaked = any(m in text for m in SECRET_MARKERS)
    if call.output is not None and call.output.is_dir():
        leaked |= any(f.is_file() and SECRET in f.read_bytes() for f in call.output.rglob("*"))
    return Outcome(
        rc, stdout.getvalue(), stderr.getvalue(), error, seconds, changed, written, leaked
    )


# --- valid inputs, built once ------------------------------------------------------------------

_TEMPLATES: Path | None = None
TEXTS = [f"{a} + {b} = {a + b}. the knight and the knave" for a in range(40) for b in (3, 17)]


def templates() -> Path:
    """A folder with `model/`, `run/`, `puzzles.jsonl` and `val.jsonl`, made once per process."""
    global _TEMPLATES
    if _TEMPLATES is not None:
        return _TEMPLATES
    from pmalopti.models.tiny import tiny_model_and_tokenizer
    from pmalopti.tasks.kk import generate_records, write_puzzles

    root = Path(tempfile.mkdtemp(prefix="pmalopti-hostile-templates-"))
    model, tok = tiny_model_and_tokenizer(
        TEXTS, vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
        max_position_embeddings=64,
    )  # fmt: skip
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    run = root / "run"
    run.mkdir()
    from safetensors.torch import load_file, save_file

    weights = load_file(str(root / "model" / "model.safetensors"))
    for step in (2, 4, 6, 8, 10, 12):
        ckpt = run / f"checkpoint-{step}"
        shutil.copytree(root / "model", ckpt)
        weights = {k: v + 0.01 for k, v in weights.items()}
        save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
        (ckpt / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "num_input_tokens_seen": step * 100})
        )
    losses = [3.0, 2.8, 2.6, 2.5, 2.4, 2.35, 2.3, 2.28, 2.26, 2.25, 9.0, 2.3, 2.2, 2.1]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i + 1, "loss": x}) + "\n" for i, x in enumerate(losses))
    )
    (run / "config.yaml").write_text("schedule:\n  warmup_steps: 0\n")
    write_puzzles(generate_records(6, people=2, people_max=3, seed=0), root / "puzzles.jsonl")
    (root / "val.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    _TEMPLATES = root
    return root


class Workspace:
    """A fresh folder per case: `ws.model()`, `ws.run()`, `ws.puzzles()`, `ws.val()`, `ws.secret`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        outside = self.root / "outside"
        outside.mkdir(exist_ok=True)
        self.secret = outside / "secret.txt"
        self.secret.write_bytes(SECRET)
        self.secret_st = outside / "secret.safetensors"
        self.secret_st.write_bytes(SECRET)

    def path(self, name: str) -> Path:
        return self.root / name

    def model(self, name: str = "model") -> Path:
        dst = self.root / name
        shutil.copytree(templates() / "model", dst)
        return dst

    def run(self, name: str = "run") -> Path:
        dst = self.root / name
        shutil.copytree(templates() / "run", dst)
        return dst

    def puzzles(self, name: str = "puzzles.jsonl") -> Path:
        return Path(shutil.copyfile(templates() / "puzzles.jsonl", self.root / name))

    def val(self, name: str = "val.jsonl") -> Path:
        return Path(shutil.copyfile(templates() / "val.jsonl", self.root / name))

    def write(self, name: str, data: bytes | str) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode("utf-8")
        p.write_bytes(data)
        return p

    @property
    def inputs(self) -> list[Path]:
        """Everything in the workspace that a command could damage, the outside folder included."""
        return [p for p in sorted(self.root.iterdir()) if p.name not in ("out", "out.json")]


def safetensors_bytes(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


CaseFn = Callable[[Workspace], Call]
