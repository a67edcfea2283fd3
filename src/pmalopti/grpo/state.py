"""GRPO run checkpoints: a Hugging Face model folder plus the trainer state needed to resume.

`checkpoint-<step>/` holds `config.json`, `model.safetensors`, the tokenizer files (so
`AutoModelForCausalLM.from_pretrained` and vLLM load it), `trainer_state.pt` (optimizer, LR
schedule, every RNG, data position, step; tensors and plain containers only, read back with
`torch.load(weights_only=True)`) and a readable `trainer_state.json`. Writes are atomic.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pmalopti.runtime.fs import atomic_dir, atomic_write_json

_CKPT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.pt"


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state a step draws from: torch (CPU, CUDA), python, the named generators."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def save_checkpoint(
    out_dir: Path,
    step: int,
    model,
    tokenizer,
    state: dict[str, Any],
    *,
    keep: int = 0,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir/checkpoint-<step>` atomically; keep the newest `keep` (0: all)."""
    path = Path(out_dir) / f"checkpoint-{step}"
    with atomic_dir(path, force=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save({**state, "step": step}, tmp / STATE_FILE)
        atomic_write_json(tmp / "trainer_state.json", {"step": step, **(summary or {})})
    if keep:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete `checkpoint-<step>` folders, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in out_dir.iterdir()
        if (m := _CKPT.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def load_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint folder (never unpickles arbitrary objects)."""
    f = Path(ckpt) / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{ckpt} is not a GRPO checkpoint: {STATE_FILE} is missing")
    return torch.load(f, map_location="cpu", weights_only=True)
