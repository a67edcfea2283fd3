"""Lopti's two-pass update on verl's *sync* v1 trainer: the trainer mode ``"pmalopti_lopti"``.

verl 0.9.1's `PPOTrainer` keys its replay buffer (`ReplayBuffer` vs `ReplayBufferAsync`), its
dataloader batching (whole `train_batch_size` fetches vs one prompt at a time), its checkpoints
(with or without a TransferQueue snapshot) and what it stores in TransferQueue on
``trainer_mode == "sync"``. `LoptiPPOTrainerSync` is registered under its own name (so verl's
``main_ppo`` builds it) but is constructed as verl's ``sync`` mode, so every one of those paths
is the sync trainer's; only `_update_actor` (two passes), the engine's loss function
(`pmalopti_ppo_loss`) and the LR schedule's horizon (two scheduler steps per batch) differ. Importing this module needs verl's v1 trainer, hence
`transfer_queue` (verl's ``verl-core`` extra, part of ``pmalopti[verl]``).
"""

from __future__ import annotations

import numbers
from functools import partial

import torch
from omegaconf import open_dict

try:
    from verl.trainer.ppo.v1.trainer_base import register_trainer as _verl_register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "pmalopti.integrations.verl_trainer needs verl's v1 trainer (verl 0.9.1 with "
        "TransferQueue): pip install 'pmalopti[verl]', or 'pmalopti[verl-tests]' on a CPU "
        f"(import failed: {e})"
    ) from e

from pmalopti.integrations.verl import (
    KL_MASK_KEY,
    TRAINER_MODE,
    DataProto,
    check_actor_config,
    lopti_batches,
    lopti_eta_from,
    pmalopti_ppo_loss,
)
from pmalopti.rl import low_token_fraction

SYNC_MODE = "sync"


class LoptiTrainerMixin:
    """Lopti's two-pass actor update for verl's v1 `PPOTrainer` (TransferQueue batches).

    `_update_actor` reads advantages/π_old/response_mask of the rollout batch, writes pass 1's
    masked advantages and KL mask, runs the parent `_update_actor` (one sweep over all
    minibatches, one optimizer step each), then does the same for pass 2, and finally restores
    the full advantages for verl's metrics. Losses and clip fractions are summed over the
    passes (they add up to the single-pass values), other metrics averaged; plus
    ``actor/lopti_low_token_frac`` and ``actor/lopti_<pass>/pg_loss``. With η = 0 it is the
    parent update, unchanged. `on_init_end` installs `pmalopti_ppo_loss` in the actor workers.

    verl advances the LR scheduler once per `update_actor` call, so with Lopti it steps twice per
    rollout batch; `_init_dataloader` doubles the schedule's horizon (the actor's
    ``optim.total_training_steps``, which verl sets there) so that a warmup ratio and a decay
    still span the run. An absolute ``lr_warmup_steps`` counts scheduler steps (two per batch).
    """

    def _init_dataloader(self):
        super()._init_dataloader()
        optim = self.config.actor_rollout_ref.actor.get("optim")
        if lopti_eta_from(self.config) > 0 and optim is not None:
            with open_dict(self.config):
                optim.total_training_steps = 2 * optim.total_training_steps  # one per pass

    def on_init_end(self):
        super().on_init_end()
        from verl.utils.config import omega_conf_to_dataclass

        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(partial(pmalopti_ppo_loss, config=actor_config))

    def _update_actor(self, batch, metrics: dict):
        eta = lopti_eta_from(self.config)
        if eta == 0:
            return super()._update_actor(batch, metrics)
        import transfer_queue as tq
        from tensordict import TensorDict
        from verl.workers.utils.padding import response_to_nested

        fields = ["response_mask", "old_log_probs", "advantages"]
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=fields
        )
        nested_mask = data["response_mask"]
        padded = DataProto(batch=data.to_padded_tensor())
        passes = lopti_batches(padded, eta)

        def put(adv: torch.Tensor, kl_mask: torch.Tensor):
            out = TensorDict(
                {
                    "advantages": response_to_nested(adv, nested_mask),
                    KL_MASK_KEY: response_to_nested(kl_mask, nested_mask),
                },
                batch_size=len(batch),
            )
            return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=out)

        pass_metrics = []
        for p in passes:
            batch = put(p.batch["advantages"], p.batch[KL_MASK_KEY])
            m: dict = {}
            batch = super()._update_actor(batch, m)
            pass_metrics.append((p.meta_info["lopti_pass"], m))
        full_mask = padded.batch["response_mask"].to(padded.batch["advantages"].dtype)
        batch = put(padded.batch["advantages"], full_mask)
        metrics.update(_merge_pass_metrics(pass_metrics))
        low = passes[0].batch[KL_MASK_KEY].bool()
        metrics["actor/lopti_low_token_frac"] = low_token_fraction(
            low, padded.batch["response_mask"]
        )
        return batch


# Per-pass values of these add up to the single-pass value: the pass objectives sum to the
# single-pass objective, and tokens with zeroed advantages are never counted as clipped.
_ADDITIVE_METRICS = (
    "actor/pg_loss",
    "actor/kl_loss",
    "actor/pg_clipfrac",
    "actor/pg_clipfrac_lower",
)


def _merge_pass_metrics(pass_metrics: list[tuple[str, dict]]) -> dict:
    """Additive metrics summed over the passes, other numbers averaged, plus per-pass pg_loss."""
    merged: dict = {}
    for _, m in pass_metrics:
        for k, v in m.items():
            merged.setdefault(k, []).append(v)
    out: dict = {}
    for k, v in merged.items():
        if not all(isinstance(x, numbers.Real) for x in v):
            out[k] = v[-1]
        else:
            out[k] = sum(v) if k in _ADDITIVE_METRICS else sum(v) / len(v)
    for name, m in pass_metrics:
        if "actor/pg_loss" in m:
            out[f"actor/lopti_{name}/pg_loss"] = m["actor/pg_loss"]
    return out


class LoptiPPOTrainerSync(LoptiTrainerMixin, PPOTrainerSync):
    """verl's sync trainer with Lopti: built as ``trainer_mode == "sync"`` (see the module doc).

    The config keeps ``trainer.v1.trainer_mode: pmalopti_lopti`` (it selects this class and is
    what the run logs); during construction verl reads ``"sync"``, so ``self.trainer_mode`` is
    ``"sync"`` for the trainer's lifetime and verl's sync code paths apply unchanged.
    """

    def __init__(self, config):
        check_actor_config(config.actor_rollout_ref.actor)
        mode = config.trainer.v1.trainer_mode
        with open_dict(config):
            config.trainer.v1.trainer_mode = SYNC_MODE
        try:
            super().__init__(config)
        finally:
            with open_dict(config):
                config.trainer.v1.trainer_mode = mode
        assert self.trainer_mode == SYNC_MODE


def register_trainer() -> None:
    """Register `LoptiPPOTrainerSync` as verl v1 trainer mode `TRAINER_MODE`. Idempotent."""
    _verl_register_trainer(TRAINER_MODE)(LoptiPPOTrainerSync)  # same class again: a no-op
