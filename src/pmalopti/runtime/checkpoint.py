"""The one checkpoint format of every built-in trainer (pretrain, SFT, GRPO).

`RUN/checkpoint-<step>/` is a Hugging Face model folder (config, safetensors weights, tokenizer)
plus `trainer_state.json` (readable: `global_step`, `num_input_tokens_seen`, `log_history`, as
HF Trainer writes it, so `pmalopti merge` reads steps and tokens from it) and `training_state.pt`
(what resuming needs: `step`, `tokens`, `optimizer`, `rng`, and whatever else the trainer keeps,
tensors and plain containers only, read back with `torch.load(weights_only=True)`).

Writes are atomic and durable (`runtime.fs.atomic_dir`): the folder is written under a hidden
`.tmp-*` name, every file is fsync'd and given umask modes, then it is renamed into place; the
leftovers of a killed write are removed by the next run (`runtime.fs.remove_stale`). Resuming takes the newest checkpoint that reads back completely
(`resume_checkpoint`) and warns about any newer one it skips.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pmalopti.runtime.fs import atomic_dir, atomic_write_json, is_ours, write_marker

if TYPE_CHECKING:  # torch loads on first use: `pmalopti merge` reads folder names without it
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"^(?:checkpoint-|step-?|iter_)(\d+)$")
"""Checkpoint folder names: ours and HF Trainer's `checkpoint-N`, OLMo-core `stepN`, torchtitan
`step-N`, Megatron `iter_NNNNNNN` (`pmalopti merge` selects from all of them)."""
STATE_FILE = "training_state.pt"
LEGACY_STATE_FILES = ("trainer_state.pt",)  # GRPO runs written before the format was shared
TRAINER_STATE = "trainer_state.json"


class CorruptCheckpoint(ValueError):
    """A checkpoint folder that does not read back completely."""


def checkpoint_step(name: str) -> int | None:
    """The step in a checkpoint folder name (`checkpoint-12`, `step12`, `iter_0000012`), or None."""
    m = CHECKPOINT_DIR.match(name)
    return int(m.group(1)) if m else None


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step}"


# --- RNG ---------------------------------------------------------------------------------------


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state a step may draw from: torch (CPU, CUDA), python, named generators."""
    import torch

    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(py[1]),
        "python_gauss": py[2],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None):
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in (generators or {}).items():
        g.set_state(state["generators"][k])


# --- write -------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model,
    tokenizer,
    state: dict[str, Any],
    *,
    tokens: int = 0,
    log_entry: dict | None = None,
    info: dict | None = None,
    keep: int = 0,
) -> Path:
    """Write `run_dir/checkpoint-<step>` atomically and durably; keep the newest `keep` (0: all).

    `state` is the trainer's resumable state (optimizer, RNG, ...); `step` and `tokens` are added.
    `log_entry` becomes `trainer_state.json`'s `log_history`; `info` adds readable keys there.
    """
    import torch

    from pmalopti.runtime.hf import save_pretrained

    path = checkpoint_path(run_dir, step)
    if path.is_dir() and not is_ours(path) and state_file(path) is not None:
        write_marker(path, "checkpoint")  # this run's own, written before folders were marked
    with atomic_dir(path, force=True, kind="checkpoint") as tmp:
        save_pretrained(tmp, model, tokenizer)
        torch.save({**state, "step": step, "tokens": tokens}, tmp / STATE_FILE)
        readable = {
            "global_step": step,
            "num_input_tokens_seen": tokens,
            "log_history": [log_entry] if log_entry else [],
            **(info or {}),
        }
        atomic_write_json(tmp / TRAINER_STATE, readable)
    if keep:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


# --- read --------------------------------------------------------------------------------------


def state_file(ckpt: str | Path) -> Path | None:
    """The checkpoint's resumable-state file (current or legacy name), or None."""
    for name in (STATE_FILE, *LEGACY_STATE_FILES):
        if (f := Path(ckpt) / name).is_file():
            return f
    return None


def list_checkpoints(run_dir: str | Path, *, resumable: bool = True) -> list[tuple[int, Path]]:
    """`(step, path)` of the run's checkpoint folders, oldest first.

    With `resumable` (the default) only complete pmalopti checkpoints (config + state file);
    without it every model folder, e.g. a Hugging Face Trainer run's, for evaluation and merging.
    Completeness is judged by the files being there; `resume_checkpoint` also reads them.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    found = []
    for p in run_dir.iterdir():
        step = checkpoint_step(p.name)
        if step is None or not p.is_dir() or not (p / "config.json").is_file():
            continue
        if not resumable or state_file(p):
            found.append((step, p))
    return sorted(found)


def load_state(ckpt: str | Path) -> dict[str, Any]:
    """A checkpoint's resumable state (never unpickles arbitrary objects)."""
    import torch

    f = state_file(ckpt)
    if f is None:
        raise FileNotFoundError(f"{ckpt} has no {STATE_FILE}; it cannot be resumed")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle opcode, ...: one message for all
        raise CorruptCheckpoint(f"{f}: cannot be read ({type(exc).__name__})") from None


def verify_checkpoint(ckpt: str | Path) -> None:
    """Raise CorruptCheckpoint unless the folder's config, weights and state read back whole."""
    ckpt = Path(ckpt)
    try:
        json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
        json.loads((ckpt / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"{ckpt}: {type(exc).__name__} reading its JSON files") from None
    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise CorruptCheckpoint(f"{ckpt}: no *.safetensors weights")
    for f in files:
        _check_safetensors_size(f)
    load_state(ckpt)


def _check_safetensors_size(f: Path) -> None:
    """The header parses and the tensors it lists end exactly at the end of the file."""
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(n))
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptCheckpoint(f"{f}: not a readable safetensors file ({exc})") from None
    if 8 + n + end != size:
        raise CorruptCheckpoint(f"{f}: truncated ({size} bytes, the header needs {8 + n + end})")


def resume_checkpoint(run_dir: str | Path, *, required: bool = False) -> Path | None:
    """The newest checkpoint that reads back whole; newer broken ones are skipped with a warning.

    None when there is none, or with `required` a FileNotFoundError saying why.
    """
    found = list_checkpoints(run_dir)
    for step, path in reversed(found):
        try:
            verify_checkpoint(path)
        except CorruptCheckpoint as exc:
            log.warning("checkpoint-%d is unreadable (%s); falling back to an older one", step, exc)
            continue
        return path
    if required:
        raise FileNotFoundError(
            f"run folder {run_dir}: every checkpoint-* folder is unreadable"
            if found
            else f"run folder {run_dir} has no checkpoint-* folder to resume from"
        )
    return None
