"""The language-model loss: summed next-token cross-entropy, and its token-mean on validation.

Positions labelled IGNORE (-100) are not targets (SFT prompts, padding).
"""

from __future__ import annotations

import torch

from pmalopti.runtime.device import autocast

IGNORE = -100
Batch = dict[str, torch.Tensor]


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy and the number of target tokens.

    logits: (B, T, V); labels: (B, T) with IGNORE (-100) on positions that are not targets.
    Position t predicts labels[t + 1].
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, int((shift_labels != IGNORE).sum())


def n_targets(labels: torch.Tensor) -> int:
    """Number of positions that contribute to the loss (labels after the causal shift).  (B, T)"""
    return int((labels[:, 1:] != IGNORE).sum())


def batch_loss_sum(model, b: Batch, device: torch.device, precision: str) -> torch.Tensor:
    """Summed target-token loss of one batch (with gradient when enabled)."""
    with autocast(device, precision):
        logits = model(
            input_ids=b["input_ids"].to(device),
            attention_mask=b["attention_mask"].to(device),
        ).logits  # (B, T, V)
    s, _ = token_loss_sum(logits, b["labels"].to(device))
    return s


def evaluate_batches(
    model, batches: list[Batch], device: torch.device, precision: str = "auto"
) -> float:
    """Token-mean loss over all target tokens of `batches` (no gradient)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            total += float(batch_loss_sum(model, b, device, precision))
            count += n_targets(b["labels"])
    model.train(was_training)
    if count == 0:
        raise ValueError("validation data has no target tokens")
    return total / count
