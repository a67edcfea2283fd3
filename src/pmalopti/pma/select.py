"""Which checkpoints to merge: explicit paths, or a run folder of `checkpoint-<step>` / `step<N>`.

PMA (arXiv 2505.12082, Sec. 4) merges the last N checkpoints spaced V tokens (or steps) apart.
Selection never guesses: `--every-steps V` / `--every-tokens V` ask for checkpoints exactly V
apart counting back from the newest (at or before `--until`), and a missing one is an error
unless `--nearest` accepts the nearest checkpoints (the table then shows what was taken).
Explicit inputs are ordered by step where every step is known.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pmalopti.pma.dcp_layout import step_from_name
from pmalopti.runtime.checkpoint import CHECKPOINT_DIR as STEP_DIR


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint to merge, with its training step and tokens seen where known."""

    path: Path
    step: int | None = None
    tokens: int | None = None


@dataclass
class Selection:
    """The chosen checkpoints (oldest first), the targets asked for, and notes to print."""

    checkpoints: list[Checkpoint]
    targets: list[int] | None = None
    """with --every-steps/--every-tokens: the step (or token count) asked for, per checkpoint"""
    key: str = "step"
    notes: list[str] = field(default_factory=list)
    """warnings for the user (deprecated options, --nearest substitutions, schedule phases)"""


def read_trainer_state(folder: Path) -> tuple[int | None, int | None]:
    """(global_step, num_input_tokens_seen) from a HF Trainer `trainer_state.json`, if present."""
    state = _trainer_state(Path(folder))
    if state is None:
        return None, None
    step = state.get("global_step")
    tokens = state.get("num_input_tokens_seen")
    if not tokens:  # 0 or absent: older Trainer versions log it per step only
        for entry in reversed(state.get("log_history") or []):
            if "num_input_tokens_seen" in entry:
                tokens = entry["num_input_tokens_seen"]
                break
    # Trainer writes 0 when it was not counting tokens (include_num_input_tokens_seen=False).
    return (int(step) if step is not None else None), (int(tokens) if tokens else None)


def _trainer_state(folder: Path) -> dict | None:
    f = folder / "trainer_state.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{f}: cannot read trainer state ({exc})") from exc


def describe(path: str | Path) -> Checkpoint:
    """A checkpoint for `path`, with the step from its trainer state or its folder name."""
    path = Path(path)
    step, tokens = read_trainer_state(path) if path.is_dir() else (None, None)
    m = STEP_DIR.match(path.name)
    if step is None and m:
        step = int(m.group(1))
    if step is None:  # a DCP sub-folder (OLMo-core model_and_optim/, pytorch_model_fsdp_0/)
        step = step_from_name(path)
    return Checkpoint(path, step, tokens)


def checkpoints_from_paths(
    paths: Sequence[str | Path], *, order_sensitive: bool = True, as_given: bool = False
) -> list[Checkpoint]:
    """Explicit inputs, ordered oldest first by step where every step is known.

    Where a step cannot be known (no trainer_state.json, no step in the name) and the weights
    depend on the order (`order_sensitive`: ema, wma, explicit weights), refuse, unless
    `as_given` says the inputs are oldest first as listed.
    """
    ckpts = [describe(p) for p in paths]
    unknown = [str(c.path) for c in ckpts if c.step is None]
    if not unknown:
        return sorted(ckpts, key=lambda c: c.step)  # type: ignore[arg-type,return-value]
    if order_sensitive and not as_given:
        raise ValueError(
            f"cannot tell the training step of {unknown[0]}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + " (no trainer_state.json, no checkpoint-<step> or step<N> name), and the weights "
            "depend on which checkpoint is oldest; list them oldest first and add --as-given, "
            "or use --method sma"
        )
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
    every_steps: int | None = None,
    every_tokens: int | None = None,
    every: int | None = None,
    until: int | None = None,
    nearest: bool = False,
) -> Selection:
    """Checkpoints (oldest first) at steps <= `until`, exactly V apart counting back from the
    newest of them, the newest `last` of those.

    `every_steps=V` / `every_tokens=V` ask for the steps (token counts) a, a-V, a-2V, ... where a
    is the newest checkpoint's; a missing one is refused, naming it, unless `nearest` takes the
    nearest unused checkpoint instead (ties go to the older). `every=K` (deprecated) counts
    folders and stands for `every_steps = K x the save interval`, refused when the folders are
    not evenly spaced.
    """
    for name, v in (("last", last), ("every", every), ("every-steps", every_steps)):
        if v is not None and v < 1:
            raise ValueError(f"--{name} must be at least 1, got {v}")
    if every_tokens is not None and every_tokens < 1:
        raise ValueError(f"--every-tokens must be at least 1, got {every_tokens}")
    given = [n for n, v in (("every", every), ("every-steps", every_steps)) if v is not None]
    given += ["every-tokens"] if every_tokens is not None else []
    if len(given) > 1:
        raise ValueError(f"give one of --{', --'.join(given)}, not both")
    if nearest and not given:
        raise ValueError("--nearest applies to --every-steps or --every-tokens")
    picked = list(ckpts)
    if until is not None:
        picked = [c for c in picked if c.step is not None and c.step <= until]
        if not picked:
            raise ValueError(f"no checkpoint at or before step {until}")
    notes: list[str] = []
    if every is not None:
        every_steps = every * _even_spacing(picked, every)
        notes.append(f"--every {every} is deprecated; it stands for --every-steps {every_steps}")
    if every_steps is None and every_tokens is None:
        if last is not None:
            if len(picked) < last:
                raise ValueError(f"--last {last} asked, but only {len(picked)} checkpoints match")
            picked = picked[-last:]
        gaps = _gaps(picked, "step")
        if len(gaps) > 1:
            notes.append(
                f"the selected checkpoints are not evenly spaced (step gaps {sorted(gaps)}); "
                "--every-steps V asks for exactly V apart"
            )
        return Selection(picked, notes=notes)
    key, v = ("step", every_steps) if every_steps is not None else ("tokens", every_tokens)
    assert v is not None
    return _spaced(picked, key, v, last, nearest, notes)


def _gaps(ckpts: Sequence[Checkpoint], key: str) -> set[int]:
    vals = [getattr(c, key) for c in ckpts]
    if any(x is None for x in vals):
        return set()
    return {b - a for a, b in itertools.pairwise(vals)}


def _even_spacing(ckpts: Sequence[Checkpoint], every: int) -> int:
    gaps = _gaps(ckpts, "step")
    if len(ckpts) > 1 and (len(gaps) != 1 or any(c.step is None for c in ckpts)):
        steps = [c.step for c in ckpts]
        raise ValueError(
            f"--every {every} counts folders, but the checkpoints are not evenly spaced "
            f"(steps {steps}); use --every-steps V to ask for checkpoints exactly V steps apart"
        )
    return next(iter(gaps), 1)


def _spaced(
    ckpts: list[Checkpoint], key: str, v: int, last: int | None, nearest: bool, notes: list[str]
) -> Selection:
    flag = "--every-steps" if key == "step" else "--every-tokens"
    unknown = [str(c.path) for c in ckpts if getattr(c, key) is None]
    if unknown:
        need = "a step" if key == "step" else "num_input_tokens_seen in trainer_state.json"
        raise ValueError(f"{flag} needs {need}; missing for {unknown[:3]}")
    values = [getattr(c, key) for c in ckpts]
    anchor, oldest = values[-1], values[0]
    n = last if last is not None else (anchor - oldest) // v + 1
    targets = [anchor - i * v for i in range(n)][::-1]  # oldest first
    if targets[0] < 0:
        raise ValueError(
            f"{flag} {v:,} with --last {n} reaches back to {key} {targets[0]:,}, before the start"
        )
    by_value = {x: c for x, c in zip(values, ckpts, strict=True)}
    missing = [t for t in targets if t not in by_value]
    if missing and not nearest:
        unit = "steps" if key == "step" else "token counts"
        raise ValueError(
            f"{flag} {v:,}: no checkpoint at {unit} {', '.join(f'{m:,}' for m in missing)} "
            f"(window {', '.join(f'{t:,}' for t in targets)}; present: "
            f"{', '.join(f'{x:,}' for x in values)}); add --nearest to take the nearest ones"
        )
    chosen: list[Checkpoint] = []
    used: set[int] = set()
    for t in reversed(targets):  # newest first, so the newest checkpoints match themselves
        free = [x for x in values if x not in used]
        if not free:
            raise ValueError(f"{flag} {v:,}: only {len(values)} checkpoints for {n} targets")
        x = min(free, key=lambda x: (abs(x - t), x))
        used.add(x)
        chosen.append(by_value[x])
        if x != t:
            notes.append(f"--nearest: {key} {t:,} is missing; took {key} {x:,}")
    return Selection(chosen[::-1], targets=targets, key=key, notes=notes)


def choose_checkpoints(
    *,
    run_dir: str | Path | None = None,
    paths: Sequence[str | Path] = (),
    order_sensitive: bool = True,
    as_given: bool = False,
    **selection,
) -> Selection:
    """What `pmalopti merge` merges: a run folder's checkpoints or explicit `paths` (ordered by
    step, see `checkpoints_from_paths`), selected by `select_checkpoints(**selection)`, with notes
    on the order used and on checkpoints outside the constant-LR phase."""
    if run_dir is not None and paths:
        raise ValueError("give checkpoints or --run-dir, not both")
    notes = []
    if run_dir is not None:
        ckpts = discover_checkpoints(run_dir)
    elif paths:
        ckpts = checkpoints_from_paths(paths, order_sensitive=order_sensitive, as_given=as_given)
        if [c.path for c in ckpts] != [Path(p) for p in paths]:
            order = ", ".join(f"{c.path} ({c.step})" for c in ckpts)
            notes.append(f"inputs ordered by step: {order}")
    else:
        raise ValueError("give checkpoints to merge, --run-dir RUN, or --example")
    sel = select_checkpoints(ckpts, **selection)
    sel.notes[:0] = notes
    parents = {c.path.parent for c in sel.checkpoints}
    run = Path(run_dir) if run_dir is not None else parents.pop() if len(parents) == 1 else None
    if run is not None and run.is_dir():  # explicit inputs of one run folder: its schedule
        sel.notes += phase_notes(sel.checkpoints, stable_steps(run))
    return sel


def stable_steps(run_dir: str | Path) -> tuple[int, int | None] | None:
    """(first, last) checkpoint steps of the constant-LR phase where the run says so, else None.

    A pmalopti run's `config.yaml` gives the WSD schedule exactly (a checkpoint after s updates is
    stable when warmup <= s <= steps - decay); a Hugging Face run's newest `trainer_state.json`
    gives the logged learning rates: stable is where the LR is at its peak (`last` is None while
    the LR has not come down yet).
    """
    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"
    if cfg_file.is_file():
        import yaml

        try:
            cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
            sched, train = cfg.get("schedule") or {}, cfg.get("train") or {}
            if "warmup_steps" in sched and "steps" in train:
                warmup, decay = int(sched["warmup_steps"]), int(sched.get("decay_steps", 0))
                return warmup, int(train["steps"]) - decay
        except (yaml.YAMLError, AttributeError, TypeError, ValueError):
            return None
    ckpts = [d for d in run_dir.iterdir() if d.is_dir() and STEP_DIR.match(d.name)]
    if not ckpts:
        return None
    newest = max(ckpts, key=lambda d: int(STEP_DIR.match(d.name).group(1)))  # type: ignore[union-attr]
    state = _trainer_state(newest) or {}
    lrs = [
        (int(e["step"]), float(e["learning_rate"]))
        for e in state.get("log_history") or []
        if "learning_rate" in e and "step" in e
    ]
    if len(lrs) < 2:
        return None
    peak = max(lr for _, lr in lrs)
    at_peak = [s for s, lr in lrs if lr >= peak * (1 - 1e-6)]
    after = [s for s, lr in lrs if s > at_peak[-1]]
    return at_peak[0], (at_peak[-1] if after else None)


def phase_notes(ckpts: Sequence[Checkpoint], stable: tuple[int, int | None] | None) -> list[str]:
    """Warnings for checkpoints of the warmup or decay phase (the paper merges in the stable one)."""
    if stable is None:
        return []
    first, last = stable
    warm = [c.step for c in ckpts if c.step is not None and c.step < first]
    decay = [c.step for c in ckpts if c.step is not None and last is not None and c.step > last]
    notes = []
    if warm:
        notes.append(f"steps {warm} are in the warmup (the LR is constant from step {first})")
    if decay:
        notes.append(f"steps {decay} are in the LR decay (constant LR ends at step {last})")
    return [n + "; PMA merges constant-LR checkpoints (arXiv 2505.12082 Sec. 4.1)" for n in notes]


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


def format_table(
    ckpts: Sequence[Checkpoint],
    weights: Sequence[float],
    targets: Sequence[int] | None = None,
    key: str = "step",
) -> str:
    """The selection as a table: one row per checkpoint, oldest first (and the target asked for)."""
    head = ("#", "checkpoint", "step", "tokens", "weight")
    if targets is not None:
        head += (f"target {key}",)
    rows = []
    for i, (c, w) in enumerate(zip(ckpts, weights, strict=True), 1):
        row = (
            str(i),
            str(c.path),
            "-" if c.step is None else str(c.step),
            "-" if c.tokens is None else f"{c.tokens:,}",
            f"{w:.4f}",
        )
        if targets is not None:
            got = c.step if key == "step" else c.tokens
            row += (f"{targets[i - 1]:,}" + ("" if got == targets[i - 1] else " (nearest)"),)
        rows.append(row)
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if j in (1, 5) else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [head, *rows]
    )
