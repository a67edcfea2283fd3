"""Hostile cases: merge inputs that do not fit together, and bad merge options."""

from __future__ import annotations

from pathlib import Path

from cases_models import ST
from hostile_harness import Call
from hostile_registry import add

# --- merge: two valid inputs that do not fit together, and bad options ------------------------


def _retype(m: Path, dtype: str) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(m / ST))
    save_file({k: v.to(getattr(__import__("torch"), dtype)) for k, v in sd.items()}, str(m / ST))


def _rename(m: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(m / ST))
    save_file({k + ".x": v for k, v in sd.items()}, str(m / ST))


def _reshape(m: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(m / ST))
    k = next(iter(sd))
    sd[k] = sd[k].reshape(-1)
    save_file(sd, str(m / ST))


def _int_tensor(m: Path, value: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(m / ST))
    sd["step"] = torch.tensor([value])
    save_file(sd, str(m / ST))


PAIR_BREAKS = {
    "different tensor names": _rename,
    "a different shape": _reshape,
}
for how, fn in PAIR_BREAKS.items():
    add(
        f"merge: second checkpoint with {how}",
        lambda ws, fn=fn: Call(
            [
                "merge",
                str(ws.model("a")),
                str((fn(b := ws.model("b")), b)[1]),
                "-o",
                str(ws.path("out")),
            ],
            ws.inputs,
            ws.path("out"),
        ),
    )
add(
    "merge: integer tensors that differ",
    lambda ws: Call(
        [
            "merge",
            str((_int_tensor(a := ws.model("a"), 1), a)[1]),
            str((_int_tensor(b := ws.model("b"), 2), b)[1]),
            "-o",
            str(ws.path("out")),
        ],
        ws.inputs,
        ws.path("out"),
    ),
)

MERGE_OPTIONS = {
    "weights not numbers": ["--weights", "1,x"],
    "weights count mismatch": ["--weights", "1"],
    "weights with NaN": ["--weights", "nan,1"],
    "weights with inf": ["--weights", "inf,1"],
    "weights summing to zero": ["--weights", "0,0"],
    "weights empty": ["--weights", ""],
    "ema alpha 0": ["--method", "ema", "--alpha", "0"],
    "ema alpha 2": ["--method", "ema", "--alpha", "2"],
    "ema alpha NaN": ["--method", "ema", "--alpha", "nan"],
    "alpha without ema": ["--alpha", "0.5"],
    "shard size 0": ["--shard-size", "0"],
    "shard size negative": ["--shard-size", "-5"],
    "shard size words": ["--shard-size", "lots"],
    "shard size 1e400": ["--shard-size", "1e400"],
    "shard size NaN": ["--shard-size", "nan"],
}
for how, opts in MERGE_OPTIONS.items():
    add(
        f"merge: {how}",
        lambda ws, opts=opts: Call(
            ["merge", str(ws.model("a")), str(ws.model("b")), *opts, "-o", str(ws.path("out"))],
            ws.inputs,
            ws.path("out"),
        ),
    )

RUN_OPTIONS = {
    "--last 0": ["--last", "0"],
    "--last -3": ["--last", "-3"],
    "--last 99": ["--last", "99"],
    "--every 0": ["--last", "2", "--every", "0"],
    "--every -1": ["--last", "2", "--every", "-1"],
    "--every-tokens words": ["--last", "2", "--every-tokens", "many"],
    "--every-tokens negative": ["--last", "2", "--every-tokens=-4B"],
    "--until before every checkpoint": ["--last", "2", "--until", "1"],
    "--until negative": ["--last", "2", "--until", "-1"],
}
for how, opts in RUN_OPTIONS.items():
    add(
        f"merge --run-dir: {how}",
        lambda ws, opts=opts: Call(
            ["merge", "--run-dir", str(ws.run()), *opts, "-o", str(ws.path("out"))],
            ws.inputs,
            ws.path("out"),
        ),
    )

add(
    "merge: no inputs",
    lambda ws: Call(["merge", "-o", str(ws.path("out"))], ws.inputs, ws.path("out")),
)
add(
    "merge: run folder and checkpoints both",
    lambda ws: Call(
        ["merge", str(ws.model()), "--run-dir", str(ws.run()), "-o", str(ws.path("out"))],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "merge: run folder absent",
    lambda ws: Call(
        ["merge", "--run-dir", str(ws.path("nope")), "-o", str(ws.path("out"))],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "merge: run folder empty",
    lambda ws: Call(
        [
            "merge",
            "--run-dir",
            str((ws.path("r").mkdir(), ws.path("r"))[1]),
            "-o",
            str(ws.path("out")),
        ],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "merge: run folder a file",
    lambda ws: Call(
        ["merge", "--run-dir", str(ws.write("r.txt", "x")), "-o", str(ws.path("out"))],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "merge: output is an input",
    lambda ws: Call(
        ["merge", str(ws.model("a")), str(ws.model("b")), "-o", str(ws.path("b")), "--force"],
        ws.inputs,
    ),
)
add(
    "merge: output inside an input",
    lambda ws: Call(
        ["merge", str(ws.model("a")), str(ws.model("b")), "-o", str(ws.path("b") / "sub")],
        ws.inputs,
        ws.path("b") / "sub",
    ),
)
add(
    "merge: output exists",
    lambda ws: Call(
        ["merge", str(ws.model("a")), str(ws.model("b")), "-o", str(ws.model("existing"))],
        ws.inputs,
    ),
)
add(
    "merge: output an existing file",
    lambda ws: Call(
        [
            "merge",
            str(ws.model("a")),
            str(ws.model("b")),
            "-o",
            str(ws.write("file.txt", "keep me")),
        ],
        ws.inputs,
    ),
)
add(
    "merge: output the working folder, forced",
    lambda ws: Call(
        ["merge", str(ws.model("a")), str(ws.model("b")), "-o", ".", "--force"],
        ws.inputs,
        cwd=ws.root,
    ),
)
add(
    "merge: output a foreign folder, forced",
    lambda ws: Call(
        [
            "merge",
            str(ws.model("a")),
            str(ws.model("b")),
            "-o",
            str((ws.write("data/notes.txt", "mine"), ws.path("data"))[1]),
            "--force",
        ],
        ws.inputs,
    ),
)
add(
    "merge: a .safetensors file that is not one",
    lambda ws: Call(
        [
            "merge",
            str(ws.write("x.safetensors", "hello")),
            str(ws.model()),
            "-o",
            str(ws.path("out")),
        ],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "merge: a checkpoint with an odd suffix",
    lambda ws: Call(
        ["merge", str(ws.write("x.txt", "hello")), str(ws.model()), "-o", str(ws.path("out"))],
        ws.inputs,
        ws.path("out"),
    ),
)
add(
    "merge: the secret file as a checkpoint",
    lambda ws: Call(
        ["merge", str(ws.secret_st), str(ws.model()), "-o", str(ws.path("out"))],
        ws.inputs,
        ws.path("out"),
    ),
)

# what merge must do (exit 0) with inputs that look odd but are fine
add(
    "merge: negative weights (extrapolation is allowed)",
    lambda ws: Call(
        [
            "merge",
            str((r := ws.run()) / "checkpoint-2"),
            str(r / "checkpoint-4"),
            "--weights=-1,2",
            "-o",
            str(ws.path("out")),
        ],
        ws.inputs,
    ),
    "ok",
)
add(
    "merge: two valid checkpoints",
    lambda ws: Call(
        ["merge", str(ws.model("a")), str(ws.model("b")), "-o", str(ws.path("out"))], ws.inputs
    ),
    "ok",
)
add(
    "merge: a tokenizer symlink that stays inside",
    lambda ws: Call(
        [
            "merge",
            str(ws.model("a")),
            str(
                (
                    m := ws.model("b"),
                    (m / "tok.json").write_text((m / "tokenizer.json").read_text()),
                    (m / "tokenizer.json").unlink(),
                    (m / "tokenizer.json").symlink_to("tok.json"),
                    m,
                )[-1]
            ),
            "-o",
            str(ws.path("out")),
        ],
        ws.inputs,
    ),
    "ok",
)
add(
    "merge: --dry-run of a run folder",
    lambda ws: Call(["merge", "--run-dir", str(ws.run()), "--last", "3", "--dry-run"], ws.inputs),
    "ok",
)
add(
    "merge: checkpoints of different dtypes (summed in fp32)",
    lambda ws: Call(
        [
            "merge",
            str(ws.model("a")),
            str((_retype(b := ws.model("b"), "float16"), b)[1]),
            "-o",
            str(ws.path("out")),
        ],
        ws.inputs,
    ),
    "ok",
)
