"""Validation loss of checkpoints, and the PMA evaluation of a run (live vs merged vs annealed).

Merges are made in memory (`pmalopti.pma.in_memory`), which is all a tiny run needs; large
checkpoints go through the streaming `pmalopti merge`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from pmalopti.lm.data import lm_batch, read_texts, tokenize_blocks
from pmalopti.lm.loss import evaluate_batches
from pmalopti.lm.schedule import stable_range
from pmalopti.pma.in_memory import merged_state_dict
from pmalopti.pma.spec import MergeSpec
from pmalopti.runtime.checkpoint import list_checkpoints
from pmalopti.runtime.device import resolve_device
from pmalopti.runtime.hf import load_model, load_tokenizer


def blocks_loss(model, blocks: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Token-mean next-token loss over packed blocks.  blocks: (N, T)"""
    batches = [lm_batch(blocks[i : i + batch_size]) for i in range(0, blocks.size(0), batch_size)]
    return evaluate_batches(model, batches, device)


def expand_checkpoints(paths: Sequence[str | Path]) -> list[Path]:
    """Model folders as given; a run folder (no config.json) stands for all its checkpoints."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"checkpoint {p} does not exist")
        if (p / "config.json").is_file():
            out.append(p)
            continue
        found = [c for _, c in list_checkpoints(p, resumable=False)] if p.is_dir() else []
        if not found:
            raise FileNotFoundError(
                f"{p} is neither a model folder nor a run folder with checkpoint-* folders"
            )
        out.extend(found)
    return out


DEFAULT_MAX_LENGTH = 1024
"""Block length when none is given: the models' context, capped at this."""


def model_context(ckpt: str | Path) -> int | None:
    """The number of positions a checkpoint's model was built for (None if its config says not)."""
    import json

    f = Path(ckpt) / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{f}: cannot read the model config ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{f}: the model config is not a JSON object")
    cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def block_length(ckpts: Sequence[Path], max_length: int | None) -> int:
    """The block length: `max_length`, refused beyond any checkpoint's context; by default the
    smallest context (at most `DEFAULT_MAX_LENGTH`), so that all checkpoints see the same blocks.

    A model scored on blocks longer than its context reports a meaningless loss (positions it
    never learnt), so a too-long `max_length` is an error rather than a silent clamp.
    """
    contexts = {c: model_context(c) for c in ckpts}
    known = [n for n in contexts.values() if n is not None]
    if max_length is None:
        return min([DEFAULT_MAX_LENGTH, *known])
    if max_length < 2:
        raise ValueError(f"--max-length must be >= 2, got {max_length}")
    for c, n in contexts.items():
        if n is not None and max_length > n:
            raise ValueError(
                f"--max-length {max_length} is beyond the context of {c} ({n} positions); "
                f"use --max-length {n} or less"
            )
    return max_length


def evaluate_checkpoints(
    paths: Sequence[str | Path],
    data: str | Path,
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    text_field: str = "text",
    max_blocks: int | None = None,
    device: str = "auto",
) -> list[dict]:
    """Loss and perplexity of each checkpoint on `data`, tokenized with the checkpoint's tokenizer.

    `max_length`: tokens per block (default: the smallest context of the checkpoints, at most
    `DEFAULT_MAX_LENGTH`; beyond a checkpoint's context: refused). `max_blocks`: at most this
    many blocks (None or 0: all).
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if max_blocks is not None and max_blocks < 0:
        raise ValueError(f"--max-blocks must be >= 0 (0 = all), got {max_blocks}")
    ckpts = expand_checkpoints(paths)
    length = block_length(ckpts, max_length)
    texts = read_texts(data, text_field)
    dev = resolve_device(device)
    rows = []
    for ckpt in ckpts:
        tok = load_tokenizer(ckpt)
        blocks = tokenize_blocks(texts, tok, length)
        if max_blocks:
            blocks = blocks[:max_blocks]
        model = load_model(ckpt, dev)
        loss = blocks_loss(model, blocks, batch_size, dev)
        rows.append(
            {
                "checkpoint": str(ckpt),
                "tokens": int(blocks.numel() - blocks.size(0)),
                "max_length": length,
                "loss": loss,
                "perplexity": math.exp(min(loss, 50.0)),
            }
        )
        del model
    return rows


# --- PMA evaluation of a run -------------------------------------------------------------------


def load_into(model, state: dict[str, torch.Tensor]) -> None:
    """Load a saved state dict; only tied weights (absent from safetensors files) may be missing."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )


@dataclasses.dataclass
class PMAResult:
    run: str
    n: int
    stride: int
    interval_steps: int
    methods: list[str]
    val_tokens: int
    live: list[dict]
    """every checkpoint: step, tokens, val_loss, phase"""
    points: list[dict]
    """merge points: step, tokens, live, one entry per method, merged_steps"""
    annealed: dict | None
    """the final checkpoint after the decay phase (None without a decay phase)"""
    schedule: dict


def choose_points(candidates: Sequence[int], k: int) -> list[int]:
    """`k` indices spread evenly over `candidates`, always including the last one."""
    if not candidates or k < 1:
        return []
    if k >= len(candidates):
        return list(candidates)
    step = (len(candidates) - 1) / (k - 1) if k > 1 else 0
    picks = {candidates[round(len(candidates) - 1 - i * step)] for i in range(k)}
    return sorted(picks)


def evaluate_pma(
    run_dir: str | Path,
    *,
    val_blocks: torch.Tensor,
    total_steps: int,
    warmup_steps: int,
    decay_steps: int,
    n: int = 5,
    stride: int = 1,
    points: int = 4,
    methods: Sequence[str] = ("sma", "wma", "ema:0.1", "ema:0.2"),
    batch_size: int = 16,
    device: str = "auto",
) -> PMAResult:
    """Validation loss of the live checkpoints, of merges of the last `n` checkpoints (every
    `stride`-th) at `points` places in the stable phase, and of the annealed final model.

    Only checkpoints of the stable phase are merged: the paper (Sec. 4.1) merges in the
    constant-LR phase and finds that merging too early, with unstable weights, hurts.
    """
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"run folder {run_dir} has no checkpoint-* folders")
    dev = resolve_device(device)
    first_stable, last_stable = stable_range(total_steps, warmup_steps, decay_steps)
    by_step = dict(ckpts)
    steps = [s for s, _ in ckpts]
    model = load_model(ckpts[-1][1], dev)
    tokens = {s: _tokens(p) for s, p in ckpts}

    def loss_of(state: dict[str, torch.Tensor]) -> float:
        load_into(model, state)
        return blocks_loss(model, val_blocks, batch_size, dev)

    def phase(s: int) -> str:
        return "warmup" if s < first_stable else "stable" if s <= last_stable else "decay"

    live = []
    for s, p in ckpts:
        live.append(
            {
                "step": s,
                "tokens": tokens[s],
                "val_loss": loss_of(merged_state_dict([p], [1.0])),
                "phase": phase(s),
            }
        )
    live_loss = {r["step"]: r["val_loss"] for r in live}

    stable = [s for s in steps if first_stable <= s <= last_stable]
    eligible = [s for i, s in enumerate(stable) if i - (n - 1) * stride >= 0]
    result_points = []
    for s in choose_points(eligible, points):
        i = stable.index(s)
        window = stable[i - (n - 1) * stride : i + 1 : stride]
        row = {"step": s, "tokens": tokens[s], "live": live_loss[s], "merged_steps": window}
        for m in methods:
            weights = MergeSpec.parse(m).merge_weights(n)
            row[m] = loss_of(merged_state_dict([by_step[w] for w in window], weights))
        result_points.append(row)
    annealed = None
    if decay_steps > 0 and steps[-1] > last_stable:
        s = steps[-1]
        annealed = {"step": s, "tokens": tokens[s], "val_loss": live_loss[s]}
    return PMAResult(
        run=str(run_dir),
        n=n,
        stride=stride,
        interval_steps=(stable[1] - stable[0]) * stride if len(stable) > 1 else 0,
        methods=list(methods),
        val_tokens=int(val_blocks.numel() - val_blocks.size(0)),
        live=live,
        points=result_points,
        annealed=annealed,
        schedule={
            "total_steps": total_steps,
            "warmup_steps": warmup_steps,
            "decay_steps": decay_steps,
        },
    )


def _tokens(ckpt: Path) -> int:
    import json

    f = ckpt / "trainer_state.json"
    if f.is_file():
        return int(json.loads(f.read_text(encoding="utf-8")).get("num_input_tokens_seen", 0))
    return 0
