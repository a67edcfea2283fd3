"""Distributed-checkpoint (DCP) folders of pre-training frameworks: which layout, which keys.

Pre-training frameworks save `torch.distributed.checkpoint` folders (`.metadata` +
`__<rank>_<n>.distcp`), each in its own place and with its own key names:

| layout       | a checkpoint is                                   | DCP folder          | model keys |
|--------------|---------------------------------------------------|---------------------|------------|
| `torchtitan` | `<dump>/checkpoint/step-<N>/`                     | itself              | all but the top-level states `optimizer`, `lr_scheduler`, `dataloader`, `train_state` |
| `olmo-core`  | `<save>/step<N>/` (or its `model_and_optim/`)     | `model_and_optim/`  | `model.*` (the rest is `optim.*`) |
| `megatron`   | `<save>/iter_<NNNNNNN>/` (`--ckpt-format torch_dist`) | itself          | all but `optimizer.*` and `rng_state*` |
| `accelerate` | `checkpoint-<N>/` (or its `pytorch_model_fsdp_0/`) | `pytorch_model_fsdp_0/` | `model.*` (the optimizer is in `optimizer_0/`) |

The step comes from the folder name (`step-N`, `stepN`, `iter_N`, `checkpoint-N`, and `pma-N` for
the online callback's merges). A DCP folder with another name is the generic layout `dcp`: its
model keys are every key outside the roots `optimizer`, `optim`, `lr_scheduler`, `scheduler`,
`dataloader`, `data_loader`, `train_state`, `rng_state`. `--model-prefix` overrides the
rule for any layout. Tensors outside the model (optimizer moments, schedulers, data loaders, step
counters) are never averaged: see `pmalopti.pma.dcp_merge`.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

METADATA = ".metadata"


class Layout(StrEnum):
    TORCHTITAN = "torchtitan"
    OLMO_CORE = "olmo-core"
    MEGATRON = "megatron"
    ACCELERATE = "accelerate"
    DCP = "dcp"


# Folder name -> (layout, step) for the folders that *are* DCP folders or hold one.
_NAMES: tuple[tuple[re.Pattern[str], Layout], ...] = (
    (re.compile(r"^step-(\d+)$"), Layout.TORCHTITAN),
    (re.compile(r"^step(\d+)$"), Layout.OLMO_CORE),
    (re.compile(r"^iter_(\d+)$"), Layout.MEGATRON),
    (re.compile(r"^checkpoint-(\d+)$"), Layout.ACCELERATE),
    (re.compile(r"^pma-(\d+)$"), Layout.DCP),  # PMACallback(save_format="dcp")
)
# Sub-folders that hold the DCP folder of a checkpoint.
_SUBDIRS = {"model_and_optim": Layout.OLMO_CORE, "pytorch_model_fsdp_0": Layout.ACCELERATE}
_NON_MODEL_ROOTS = {
    Layout.TORCHTITAN: ("optimizer", "lr_scheduler", "dataloader", "train_state"),
    Layout.MEGATRON: ("optimizer", "rng_state"),
    Layout.DCP: (
        "optimizer", "optim", "lr_scheduler", "scheduler", "dataloader", "data_loader",
        "train_state", "rng_state",
    ),
}  # fmt: skip
_MODEL_PREFIX = {Layout.OLMO_CORE: "model.", Layout.ACCELERATE: "model."}
# Megatron cannot load a torch_dist folder without these two (args, iteration, versions).
_MEGATRON_FILES = ("common.pt", "metadata.json")


@dataclass(frozen=True)
class DcpCheckpoint:
    """A DCP checkpoint: the folder given, the DCP folder inside it, its layout and step."""

    path: Path
    dcp_dir: Path
    layout: Layout
    step: int | None

    @property
    def subdir(self) -> str:
        """Where the DCP folder sits inside `path` ('' when `path` is the DCP folder)."""
        return "" if self.dcp_dir == self.path else self.dcp_dir.name


def step_from_name(path: str | Path) -> int | None:
    """The training step a checkpoint folder's name (or its parent's, for a DCP sub-folder) says."""
    path = Path(path)
    names = [path.name] + ([path.parent.name] if path.name in _SUBDIRS else [])
    for name in names:
        for pattern, _ in _NAMES:
            m = pattern.match(name)
            if m:
                return int(m.group(1))
    return None


def _layout_by_name(path: Path) -> Layout:
    if path.name in _SUBDIRS:
        return _SUBDIRS[path.name]
    for pattern, layout in _NAMES:
        if pattern.match(path.name) and layout not in (Layout.OLMO_CORE, Layout.ACCELERATE):
            return layout
    return Layout.DCP


def _has_shards(folder: Path) -> bool:
    return any(folder.glob("*.distcp"))


def detect(path: str | Path) -> DcpCheckpoint | None:
    """The DCP checkpoint at `path`, or None when `path` is not a DCP checkpoint.

    Raises ValueError when `path` looks like one but cannot be read (no `.metadata`).
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / METADATA).is_file():
        return DcpCheckpoint(path, path, _layout_by_name(path), step_from_name(path))
    for sub, layout in _SUBDIRS.items():
        d = path / sub
        if (d / METADATA).is_file():
            return DcpCheckpoint(path, d, layout, step_from_name(path))
        if d.is_dir() and _has_shards(d):
            raise ValueError(
                f"DCP folder {d} has .distcp files but no {METADATA} (incomplete save?)"
            )
    if _has_shards(path):
        raise ValueError(
            f"DCP folder {path} has .distcp files but no {METADATA} (incomplete save?)"
        )
    return None


def detect_all(paths: Sequence[str | Path]) -> list[DcpCheckpoint] | None:
    """All inputs as DCP checkpoints of one layout, or None when none is DCP.

    A mix of DCP and other checkpoints, or of two layouts, is refused.
    """
    found = [detect(p) for p in paths]
    if all(d is None for d in found):
        return None
    if any(d is None for d in found):
        dcp = next(d for d in found if d is not None)
        other = next(p for p, d in zip(paths, found, strict=True) if d is None)
        raise ValueError(
            f"{other} is not a DCP checkpoint, but {dcp.path} is ({dcp.layout}); merge checkpoints "
            "of one kind"
        )
    layouts = {d.layout for d in found}  # type: ignore[union-attr]
    if len(layouts) > 1:
        a, b = found[0], next(d for d in found if d.layout != found[0].layout)  # type: ignore[union-attr]
        raise ValueError(
            f"mixed DCP layouts: {a.path} is {a.layout}, {b.path} is {b.layout}; "  # type: ignore[union-attr]
            "merge checkpoints of one run"
        )
    return found  # type: ignore[return-value]


def model_key_rule(
    layout: Layout, model_prefix: Sequence[str] | None = None
) -> tuple[Callable[[str], bool], str]:
    """(is_model_key, the rule in words) for a layout, or for explicit prefixes."""
    if model_prefix:
        prefixes = tuple(model_prefix)
        return (lambda k: k.startswith(prefixes)), f"keys starting with {' or '.join(prefixes)}"
    prefix = _MODEL_PREFIX.get(layout)
    if prefix is not None:
        return (lambda k: k.startswith(prefix)), f"keys starting with {prefix!r} ({layout})"
    roots = _NON_MODEL_ROOTS[layout]

    def is_model(k: str) -> bool:
        return not any(k == r or k.startswith((r + ".", r + "/")) for r in roots)

    return is_model, f"keys outside {', '.join(roots)} ({layout})"


def copy_side_files(newest: DcpCheckpoint, out: Path, *, keep_non_model: bool) -> list[str]:
    """Files beside the DCP data the trainer needs: config/tokenizer always, Megatron's
    `common.pt`/`metadata.json` always, and with `keep_non_model` everything else of the newest
    checkpoint (OLMo-core `train/`, accelerate `optimizer_0/`, `scheduler.pt`, RNG states)."""
    from pmalopti.pma.writer import COPY_PATTERNS  # config and tokenizer files (imports torch)

    copied = []
    for n in _MEGATRON_FILES:
        if (newest.dcp_dir / n).is_file():
            shutil.copy2(newest.dcp_dir / n, out / newest.subdir / n)
            copied.append(str(Path(newest.subdir) / n))
    if newest.dcp_dir == newest.path:
        return copied
    for entry in sorted(newest.path.iterdir()):
        if entry == newest.dcp_dir or entry.name.startswith(
            ("pytorch_model_fsdp_", ".", "pmalopti_")
        ):
            continue  # other DCP model folders, hidden files, pmalopti's own records
        model_file = entry.is_file() and any(fnmatch.fnmatch(entry.name, p) for p in COPY_PATTERNS)
        if not (model_file or keep_non_model):
            continue
        if entry.is_dir():
            shutil.copytree(entry, out / entry.name)
        else:
            shutil.copy2(entry, out / entry.name)
        copied.append(entry.name)
    return copied
