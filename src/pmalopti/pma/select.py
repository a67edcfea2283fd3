"""Which checkpoints to merge: explicit paths, or a run folder of `checkpoint-<step>` / `step<N>`.

PMA (arXiv 2505.12082, Sec. 4) merges the last N checkpoints spaced V tokens apart; `--every K`
sets V = K x the save interval, `--every-tokens V` uses the token counts that Hugging Face
Trainer's `trainer_state.json` records, and `--until STEP` keeps only checkpoints saved before
a loss spike (PMA for recovery, Sec. 4.5).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pmalopti.runtime.checkpoint import CHECKPOINT_DIR as STEP_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint to merge, with its training step and tokens seen where known."""

    path: Path
    step: int | None = None
    tokens: int | None = None


def read_trainer_state(folder: Path) -> tuple[int | None, int | None]:
    """(global_step, num_input_tokens_seen) from a HF Trainer `trainer_state.json`, if present."""
    f = Path(folder) / "trainer_state.json"
    if not f.is_file():
        return None, None
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{f}: cannot read trainer state ({exc})") from exc
    step = state.get("global_step")
    tokens = state.get("num_input_tokens_seen")
    if not tokens:  # 0 or absent: older Trainer versions log it per step only
        for entry in reversed(state.get("log_history") or []):
            if "num_input_tokens_seen" in entry:
                tokens = entry["num_input_tokens_seen"]
                break
    # Trainer writes 0 when it was not counting tokens (include_num_input_tokens_seen=False).
    return (int(step) if step is not None else None), (int(tokens) if tokens else None)


def describe(path: str | Path) -> Checkpoint:
    """A checkpoint for `path`, with the step from its trainer state or its folder name."""
    path = Path(path)
    step, tokens = read_trainer_state(path) if path.is_dir() else (None, None)
    m = STEP_DIR.match(path.name)
    if step is None and m:
        step = int(m.group(1))
    return Checkpoint(path, step, tokens)


def checkpoints_from_paths(paths: Sequence[str | Path]) -> list[Checkpoint]:
    """Explicit inputs, oldest first as given (the order matters for EMA and WMA)."""
    ckpts = [describe(p) for p in paths]
    steps = [c.step for c in ckpts]
    if all(s is not None for s in steps) and steps != sorted(steps):
        log.warning("inputs are not in increasing step order %s; they are merged as given", steps)
    return ckpts


def discover_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """The run's `checkpoint-<step>` / `step<N>` sub-folders, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    found = [describe(d) for d in run_dir.iterdir() if d.is_dir() and STEP_DIR.match(d.name)]
    if not found:
        raise ValueError(f"run folder {run_dir} has no checkpoint-<step> or step<N> sub-folders")
    found.sort(key=lambda c: int(STEP_DIR.match(c.path.name).group(1)))  # type: ignore[union-attr]
    return found


def select_checkpoints(
    ckpts: Sequence[Checkpoint],
    *,
    last: int | None = None,
    every: int | None = None,
    every_tokens: int | None = None,
    until: int | None = None,
) -> list[Checkpoint]:
    """Keep checkpoints at or before `until`, thin them counting back from the newest, keep `last`.

    `every=K` keeps every K-th checkpoint; `every_tokens=V` keeps the newest, then each time the
    newest checkpoint at least V tokens older than the previous pick.
    """
    for name, v in (("last", last), ("every", every), ("every_tokens", every_tokens)):
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if every is not None and every_tokens is not None:
        raise ValueError("give either --every or --every-tokens, not both")
    picked = list(ckpts)
    if until is not None:
        picked = [c for c in picked if c.step is not None and c.step <= until]
        if not picked:
            raise ValueError(f"no checkpoint at or before step {until}")
    if every is not None:
        picked = picked[::-1][::every][::-1]
    if every_tokens is not None:
        unknown = [str(c.path) for c in picked if c.tokens is None]
        if unknown:
            raise ValueError(
                f"--every-tokens needs num_input_tokens_seen in trainer_state.json; missing for "
                f"{unknown[:3]}"
            )
        kept = [picked[-1]]
        for c in reversed(picked[:-1]):
            if c.tokens <= kept[-1].tokens - every_tokens:  # type: ignore[operator]
                kept.append(c)
        picked = kept[::-1]
    if last is not None:
        if len(picked) < last:
            raise ValueError(f"--last {last} asked, but only {len(picked)} checkpoints match")
        picked = picked[-last:]
    if not picked:
        raise ValueError("no checkpoints selected")
    return picked


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}
_BIN_UNITS = {"KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_count(text: str | int, what: str = "value") -> int:
    """'5GB', '200MB', '1GiB', '4B' (tokens), '1.5T', '4096' -> an integer."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgtb]i?)?b?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"{what}: cannot parse {text!r} (examples: 5GB, 200MB, 4B, 1.5T)")
    unit = (m.group(2) or "").upper()
    scale = _BIN_UNITS.get(unit) or _UNITS.get(unit)
    if scale is None:
        raise ValueError(f"{what}: unknown unit in {text!r}")
    value = float(m.group(1)) * scale
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what}: {text!r} is not a non-negative size")
    return round(value)


def format_table(ckpts: Sequence[Checkpoint], weights: Sequence[float]) -> str:
    """The selection as a table: one row per checkpoint, oldest first."""
    rows = [
        (
            str(i),
            str(c.path),
            "-" if c.step is None else str(c.step),
            "-" if c.tokens is None else f"{c.tokens:,}",
            f"{w:.4f}",
        )
        for i, (c, w) in enumerate(zip(ckpts, weights, strict=True), 1)
    ]
    head = ("#", "checkpoint", "step", "tokens", "weight")
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(5)]
    return "\n".join(
        "  ".join(
            c.ljust(w) if j == 1 else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [head, *rows]
    )
