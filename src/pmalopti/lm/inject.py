"""A loss spike on purpose: to test a recovery procedure (PMA-init, arXiv 2505.12082 Sec. 4.4).

`train.inject_spike` disturbs the optimizer steps `step .. step + steps - 1` (numbered as in
metrics.jsonl: step s is the s-th update, its loss measured on the weights after s - 1 updates).
Two disturbances, alone or together:
- `lr_factor`: the step's learning rate is multiplied by it (the paper's spikes come from an
  exceptionally high LR). The loss logged at step s is measured before update s, so an LR spike
  shows from step `step + 1` on.
- `batch: random_tokens`: the step's batches are replaced by uniformly random token ids (a
  corrupted data shard). The loss logged at the first disturbed step is already high.
Both are pure functions of the step (the random tokens are seeded by it), so a resumed run
disturbs exactly the same steps in the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from pmalopti.config import bounded
from pmalopti.lm.loss import IGNORE, Batch

CorruptBatch = Literal["none", "random_tokens"]
_SEED_OFFSET = 0x5EED  # keeps the corrupted batches apart from other per-step generators


@dataclasses.dataclass
class InjectSpikeConfig:
    step: int = bounded(0, ge=0)
    """first disturbed optimizer step, as logged in metrics.jsonl (1 = the first update);
    0 = inject nothing"""
    steps: int = bounded(1, ge=1)
    """how many consecutive steps are disturbed"""
    lr_factor: float = bounded(1.0, gt=0)
    """multiply the learning rate of the disturbed steps by this (e.g. 30)"""
    batch: CorruptBatch = "none"
    """replace the disturbed steps' batches: none (keep them) or random_tokens (uniformly random
    token ids in the same positions, a corrupted shard)"""

    def __post_init__(self):
        if self.step and self.lr_factor == 1.0 and self.batch == "none":
            raise ValueError(
                f"step is {self.step} but nothing is injected: set lr_factor (!= 1) "
                "and/or batch: random_tokens"
            )

    @property
    def enabled(self) -> bool:
        return self.step > 0

    @property
    def last(self) -> int:
        """The last disturbed step (meaningful when enabled)."""
        return self.step + self.steps - 1

    def active(self, step: int) -> bool:
        """Whether update number `step` (1-based, as logged) is disturbed."""
        return self.enabled and self.step <= step <= self.last

    def record(self) -> dict[str, float | str]:
        """What a disturbed step adds to its metrics.jsonl record."""
        out: dict[str, float | str] = {"injected_lr_factor": self.lr_factor}
        if self.batch != "none":
            out["injected_batch"] = self.batch
        return out


def random_token_batch(batch: Batch, vocab_size: int, step: int) -> Batch:
    """`batch` with every attended position's token replaced by a random id in [0, vocab_size).

    Labels follow the new tokens where the original had labels (IGNORE stays IGNORE), so the loss
    is taken on the same positions. Seeded by `step` only: a pure function of the step.
    """
    g = torch.Generator().manual_seed(_SEED_OFFSET + step)
    ids = batch["input_ids"]  # (B, T)
    noise = torch.randint(0, vocab_size, ids.shape, generator=g, dtype=ids.dtype)
    attended = batch["attention_mask"].bool()  # (B, T)
    new_ids = torch.where(attended, noise, ids)
    out = dict(batch)
    out["input_ids"] = new_ids
    if "labels" in batch:
        labels = batch["labels"]  # (B, T)
        out["labels"] = torch.where(labels == IGNORE, labels, new_ids)
    return out
