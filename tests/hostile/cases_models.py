"""Hostile cases: broken model folders, fed to merge, eval and the trainers' --init-from."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

from hostile_harness import Call, Workspace, safetensors_bytes
from hostile_registry import add

# --- broken model folders ----------------------------------------------------------------------

ST = "model.safetensors"
F32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


def _st(m: Path, header: object, data: bytes = b"", **kw) -> None:
    (m / ST).write_bytes(safetensors_bytes(header, data, **kw))


def _index(m: Path, weight_map: object, *, raw: str | None = None) -> None:
    text = raw if raw is not None else json.dumps({"metadata": {}, "weight_map": weight_map})
    (m / "model.safetensors.index.json").write_text(text)


def _shard_to(m: Path, name: str) -> None:
    """Move the weights to a shard and index every tensor to `name`."""
    from pmalopti.pma.safetensors_format import read_header

    stored, _ = read_header(m / ST)
    (m / ST).rename(m / "model-00001-of-00001.safetensors")
    _index(m, dict.fromkeys(stored, name))


def _malicious_bin(ws: Workspace) -> bytes:
    marker = ws.root / "outside" / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"w": Evil()}, protocol=2)


def _fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


MODEL_BREAKS: dict[str, Callable[[Workspace, Path], None]] = {
    "absent": lambda ws, m: __import__("shutil").rmtree(m),
    "empty folder": lambda ws, m: [p.unlink() for p in m.iterdir()],
    "config only": lambda ws, m: (m / ST).unlink(),
    "zero-byte weights": lambda ws, m: (m / ST).write_bytes(b""),
    "7-byte weights": lambda ws, m: (m / ST).write_bytes(b"\x01" * 7),
    "header length beyond the file": lambda ws, m: _st(m, {"w": F32}, b"\0" * 4, length=10**6),
    "header length 2^64-1": lambda ws, m: _st(m, {"w": F32}, b"\0" * 4, length=2**64 - 1),
    "header not JSON": lambda ws, m: _st(m, b"{not json at all", b""),
    "header a JSON list": lambda ws, m: _st(m, [1, 2, 3]),
    "header not UTF-8": lambda ws, m: _st(m, b"\xff\xfe\xfd\xfc"),
    "header nested 50000 deep": lambda ws, m: _st(m, b"[" * 50_000 + b"]" * 50_000),
    "entry without dtype": lambda ws, m: _st(m, {"w": {"shape": [1], "data_offsets": [0, 4]}}),
    "unknown dtype": lambda ws, m: _st(m, {"w": {**F32, "dtype": "F128"}}, b"\0" * 4),
    "dtype an object": lambda ws, m: _st(m, {"w": {**F32, "dtype": {"a": 1}}}, b"\0" * 4),
    "negative shape": lambda ws, m: _st(m, {"w": {**F32, "shape": [-1]}}, b"\0" * 4),
    "shape overflowing int64 beside a zero": lambda ws, m: _st(
        m, {"w": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}
    ),
    "shape of floats": lambda ws, m: _st(m, {"w": {**F32, "shape": [1.5]}}, b"\0" * 4),
    "shape of booleans": lambda ws, m: _st(m, {"w": {**F32, "shape": [True]}}, b"\0" * 4),
    "shape a string": lambda ws, m: _st(m, {"w": {**F32, "shape": "1"}}, b"\0" * 4),
    "offsets reversed": lambda ws, m: _st(m, {"w": {**F32, "data_offsets": [4, 0]}}, b"\0" * 4),
    "offsets of the wrong size": lambda ws, m: _st(
        m, {"w": {**F32, "data_offsets": [0, 8]}}, b"\0" * 8
    ),
    "offsets huge": lambda ws, m: _st(
        m, {"w": {**F32, "data_offsets": [2**64, 2**64 + 4]}}, b"\0" * 4
    ),
    "offsets three numbers": lambda ws, m: _st(
        m, {"w": {**F32, "data_offsets": [0, 4, 8]}}, b"\0" * 4
    ),
    "overlapping tensors": lambda ws, m: _st(m, {"a": F32, "b": F32}, b"\0" * 4),
    "gap between tensors": lambda ws, m: _st(
        m, {"a": F32, "b": {**F32, "data_offsets": [8, 12]}}, b"\0" * 12
    ),
    "truncated data": lambda ws, m: (m / ST).write_bytes((m / ST).read_bytes()[:-100]),
    "trailing bytes": lambda ws, m: (m / ST).write_bytes((m / ST).read_bytes() + b"\0" * 64),
    "a 1.2 MB header of empty tensors": lambda ws, m: _st(
        m, {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(20_000)}
    ),
    "metadata a list": lambda ws, m: _st(m, {"__metadata__": [1], "w": F32}, b"\0" * 4),
    "empty tensor name": lambda ws, m: _st(m, {"": F32}, b"\0" * 4),
    "weights a symlink out of the folder": lambda ws, m: (
        (m / ST).unlink(),
        (m / ST).symlink_to(ws.secret_st),
    ),
    "config a symlink out of the folder": lambda ws, m: (
        (m / "config.json").unlink(),
        (m / "config.json").symlink_to(ws.secret),
    ),
    "tokenizer config a symlink out of the folder": lambda ws, m: (
        (m / "tokenizer_config.json").unlink(),
        (m / "tokenizer_config.json").symlink_to(ws.secret),
    ),
    "config not JSON": lambda ws, m: (m / "config.json").write_text("{oops"),
    "config a JSON list": lambda ws, m: (m / "config.json").write_text("[1]"),
    "config not UTF-8": lambda ws, m: (m / "config.json").write_bytes(b"\xff\xfe"),
    "index with an absolute path": lambda ws, m: _index(m, {"w": str(ws.secret_st)}),
    "index with a ../ path": lambda ws, m: _index(m, {"w": "../outside/secret.safetensors"}),
    "index naming a missing shard": lambda ws, m: _index(m, {"w": "nope.safetensors"}),
    "index not JSON": lambda ws, m: _index(m, None, raw="{weight_map"),
    "index weight_map a list": lambda ws, m: _index(m, ["model.safetensors"]),
    "index file name a number": lambda ws, m: _index(m, {"w": 7}),
    "index naming a tensor its shard lacks": lambda ws, m: _index(m, {"no.such.tensor": ST}),
    "index shard a symlink out": lambda ws, m: (
        _shard_to(m, "s.safetensors"),
        (m / "s.safetensors").symlink_to(ws.secret_st),
    ),
    "weights a folder": lambda ws, m: ((m / ST).unlink(), (m / ST).mkdir()),
    "weights a FIFO": lambda ws, m: _fifo(m / ST),
    "bin of junk": lambda ws, m: (
        (m / ST).unlink(),
        (m / "pytorch_model.bin").write_bytes(b"junk" * 10),
    ),
    "bin with a malicious pickle": lambda ws, m: (
        (m / ST).unlink(),
        (m / "pytorch_model.bin").write_bytes(_malicious_bin(ws)),
    ),
    "bin holding a list": lambda ws, m: (
        (m / ST).unlink(),
        __import__("torch").save([1, 2], m / "pytorch_model.bin"),
    ),
    "bin index with a ../ path": lambda ws, m: (
        (m / ST).unlink(),
        (m / "pytorch_model.bin.index.json").write_text(
            json.dumps({"weight_map": {"w": "../outside/secret.txt"}})
        ),
    ),
}


def _broken_model(ws: Workspace, how: str, name: str = "bad") -> Path:
    m = ws.model(name)
    MODEL_BREAKS[how](ws, m)
    return m


for how in MODEL_BREAKS:
    add(
        f"merge: checkpoint {how}",
        lambda ws, how=how: Call(
            [
                "merge",
                str(ws.model("good")),
                str(_broken_model(ws, how)),
                "-o",
                str(ws.path("out")),
            ],
            ws.inputs,
            ws.path("out"),
        ),
    )
    # transformers reads the shard the index names and finds every weight: nothing is wrong
    eval_expect = "ok" if how == "index naming a tensor its shard lacks" else "error"
    add(
        f"eval: checkpoint {how}",
        lambda ws, how=how, eval_expect=eval_expect: Call(
            [
                "eval",
                str(_broken_model(ws, how)),
                "--data",
                str(ws.val()),
                "--json",
                str(ws.path("out.json")),
            ],
            ws.inputs,
            ws.path("out.json") if eval_expect == "error" else None,
        ),
        eval_expect,
    )

for how in (
    "absent",
    "empty folder",
    "config only",
    "config not JSON",
    "config a symlink out of the folder",
    "tokenizer config a symlink out of the folder",
    "zero-byte weights",
):
    for cmd in ("pretrain", "sft"):
        add(
            f"{cmd}: --init-from {how}",
            lambda ws, how=how, cmd=cmd: Call(
                [cmd, "--init-from", str(_broken_model(ws, how)), "-o", str(ws.path("out"))],
                ws.inputs,
                ws.path("out"),
            ),
        )
    add(
        f"grpo: --init-from {how}",
        lambda ws, how=how: Call(
            [
                "grpo",
                "--init-from",
                str(_broken_model(ws, how)),
                "--output-dir",
                str(ws.path("out")),
            ],
            ws.inputs,
            ws.path("out"),
        ),
    )
