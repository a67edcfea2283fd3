"""AR and Lopti inside verl (the engine the paper, arXiv 2505.12929, was trained with).

Three pieces, all thin around `pmalopti.rl`:

1. A policy loss registered in verl as ``"pmalopti_ar"``: Advantage Reweighting
   (α·π_old + 1 − α)·Â computed from ``old_log_prob``, then verl's own "vanilla" clipped loss
   (dual clip, rollout-IS weights, global token/sequence denominators all unchanged). α is
   ``actor_rollout_ref.actor.policy_loss.ar_alpha``, a field of `PmaloptiPolicyLossConfig`,
   which the config selects with ``policy_loss._target_``.
2. `lopti_batches`: a rollout batch (a verl `DataProto`, padded (B, T) tensors) → the two
   batches of Lopti's passes: advantages zeroed on high-probability tokens (π_old ≥ η) for
   pass 1 and on low ones for pass 2, plus a per-token KL mask under `KL_MASK_KEY`.
   ``response_mask`` is untouched, so verl's denominators (tokens/sequences of each
   minibatch) are the same in both passes and the two objectives add up to the single pass.
3. `LoptiTrainerMixin` + `lopti_ppo_loss`: the trainer runs ``update_actor`` twice per
   rollout batch (low pass, then high pass), each a full sweep of the minibatches with one
   optimizer step each; `lopti_ppo_loss` is verl's ``ppo_loss`` with the KL term restricted
   to `KL_MASK_KEY`. Registered as the v1 trainer mode ``"pmalopti_lopti"``. η is
   ``actor_rollout_ref.actor.policy_loss.lopti_eta`` (0 = plain GRPO, one pass).

Workers must import this module so the registrations exist in every Ray process: set
``VERL_USE_EXTERNAL_MODULES=pmalopti.integrations.verl`` (verl imports it on ``import verl``)
and forward it to Ray (see examples/verl/grpo_kk_lopti.sh).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from pmalopti.rl import lopti_split, low_token_fraction, reweight_advantages

try:
    from verl import DataProto
    from verl.trainer.ppo.core_algos import (
        POLICY_LOSS_REGISTRY,
        agg_loss,
        compute_policy_loss_vanilla,
        kl_penalty,
        register_policy_loss,
    )
    from verl.workers.config import PolicyLossConfig
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "pmalopti.integrations.verl needs verl; install it with `pip install 'pmalopti[verl]'` "
        f"(import failed: {e})"
    ) from e

LOSS_MODE = "pmalopti_ar"
TRAINER_MODE = "pmalopti_lopti"
KL_MASK_KEY = "pmalopti_kl_mask"


@dataclass
class PmaloptiPolicyLossConfig(PolicyLossConfig):
    """verl's PolicyLossConfig plus the two knobs of arXiv 2505.12929.

    Select it in the verl config with
    ``actor_rollout_ref.actor.policy_loss._target_=pmalopti.integrations.verl.PmaloptiPolicyLossConfig``.
    """

    ar_alpha: float = 0.0
    """AR strength α in [0, 1]: advantages scaled by α·π_old + 1 − α (paper: 0.3 K&K, 0.1 math)."""

    lopti_eta: float = 0.0
    """Lopti threshold η in [0, 1): tokens with π_old < η are updated first. 0 disables Lopti."""

    def __post_init__(self):
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()
        if not 0.0 <= self.ar_alpha <= 1.0:
            raise ValueError(f"policy_loss.ar_alpha must be in [0, 1]; got {self.ar_alpha}")
        if not 0.0 <= self.lopti_eta < 1.0:
            raise ValueError(f"policy_loss.lopti_eta must be in [0, 1); got {self.lopti_eta}")


def _policy_loss_field(config: Any, name: str) -> float:
    """Read `name` from config.policy_loss (dataclass or DictConfig), with a message if absent."""
    policy_loss = config.get("policy_loss") if config is not None else None
    value = policy_loss.get(name) if policy_loss is not None else None
    if value is None:
        raise ValueError(
            f"loss_mode {LOSS_MODE!r} needs actor_rollout_ref.actor.policy_loss.{name}; set "
            "policy_loss._target_=pmalopti.integrations.verl.PmaloptiPolicyLossConfig"
        )
    return float(value)


def compute_policy_loss_pmalopti_ar(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl policy loss "pmalopti_ar": AR on the advantages, then verl's vanilla loss.

    All tensors (B, T). ``old_log_prob`` is log π_old at the rollout temperature, as verl
    computes it, so π_old = exp(old_log_prob) is the paper's sampling probability. α = 0 is
    verl's vanilla loss exactly.
    """
    alpha = _policy_loss_field(config, "ar_alpha")
    adv = reweight_advantages(advantages, old_log_prob, alpha)  # (B, T)
    loss, metrics = compute_policy_loss_vanilla(
        old_log_prob, log_prob, adv, response_mask, loss_agg_mode, config, rollout_is_weights
    )
    metrics["actor/ar_alpha"] = alpha
    return loss, metrics


def register() -> None:
    """Register the policy loss (and, when verl's v1 trainer imports, the Lopti trainer). Idempotent."""
    if POLICY_LOSS_REGISTRY.get(LOSS_MODE) is not compute_policy_loss_pmalopti_ar:
        register_policy_loss(LOSS_MODE)(compute_policy_loss_pmalopti_ar)
    _register_trainer()


# --- Lopti ---------------------------------------------------------------------------------


def _old_log_prob_key(batch: DataProto) -> str:
    # verl's v1 trainer stores "old_log_probs", the legacy one "old_log_prob"
    for key in ("old_log_probs", "old_log_prob"):
        if key in batch.batch.keys():  # noqa: SIM118 (TensorDict has no `in`)
            return key
    raise KeyError(
        "the batch has no 'old_log_probs' (or 'old_log_prob'): Lopti needs π_old; "
        f"batch keys are {sorted(batch.batch.keys())}"
    )


def lopti_batches(batch: DataProto, eta: float) -> tuple[DataProto, DataProto]:
    """The (pass 1, pass 2) batches of Lopti for one rollout batch; `batch` is not modified.

    Reads ``advantages``, ``response_mask`` and ``old_log_probs``/``old_log_prob``, each (B, T)
    padded. Pass 1 keeps advantages on low tokens (π_old < η) and zeroes them elsewhere; pass 2
    the reverse. Each batch gets ``KL_MASK_KEY`` (B, T) float: 1 where that pass's KL applies.
    Everything else (response_mask, old/ref log-probs, meta info) is shared with `batch`.
    """
    if not 0.0 < float(eta) < 1.0:
        raise ValueError(f"lopti_eta must be in (0, 1) to split a batch; got {eta}")
    adv = batch.batch["advantages"]  # (B, T)
    mask = batch.batch["response_mask"]  # (B, T)
    old = batch.batch[_old_log_prob_key(batch)]  # (B, T)
    low, high = lopti_split(old, mask, eta)  # (B, T) bool each
    out = []
    for part in (low, high):
        tensors = batch.batch.copy()  # shallow: shares every untouched tensor
        tensors["advantages"] = adv * part.to(adv.dtype)
        tensors[KL_MASK_KEY] = part.to(adv.dtype)
        out.append(
            DataProto(
                batch=tensors,
                non_tensor_batch=dict(batch.non_tensor_batch),
                meta_info={**batch.meta_info, "lopti_pass": "low" if part is low else "high"},
            )
        )
    return out[0], out[1]


def lopti_ppo_loss(config: Any, model_output: dict, data: Any, dp_group: Any = None):
    """verl's ``ppo_loss`` with the KL term restricted to ``data[KL_MASK_KEY]`` when present.

    verl adds β·agg(KL) over every response token; Lopti's pass must count only its own
    tokens (docs/design.md). Aggregation is linear in the per-token values with fixed denominators,
    so subtracting β·agg(KL on the excluded tokens) gives exactly the restricted term, value
    and gradient, without re-implementing verl's loss.
    """
    from verl.utils.metric import Metric
    from verl.workers.utils.losses import ppo_loss
    from verl.workers.utils.padding import no_padding_2_padding

    loss, metrics = ppo_loss(config, model_output, data, dp_group)
    if not config.use_kl_loss or KL_MASK_KEY not in data.keys():  # noqa: SIM118
        return loss, metrics
    log_prob = no_padding_2_padding(model_output["log_probs"], data)  # (B, T)
    sel = data.select("response_mask", "ref_log_prob", KL_MASK_KEY).to_padded_tensor()
    response_mask = sel["response_mask"].to(bool)  # (B, T)
    excluded = response_mask & ~sel[KL_MASK_KEY].to(bool)  # (B, T)
    kld = kl_penalty(
        logprob=log_prob, ref_logprob=sel["ref_log_prob"], kl_penalty=config.kl_loss_type
    )
    removed = agg_loss(
        loss_mat=kld * excluded, loss_mask=response_mask, loss_agg_mode=config.loss_agg_mode,
        **config.global_batch_info,
    )  # fmt: skip
    loss = loss - removed * config.kl_loss_coef
    old = metrics.get("kl_loss")
    if isinstance(old, Metric):
        kept = [v - float(removed.detach()) for v in old.values]  # one value per micro-batch call
        metrics["kl_loss"] = Metric(aggregation=old.aggregation)
        metrics["kl_loss"].extend(kept)
    return loss, metrics


def lopti_eta_from(config: Any) -> float:
    """η from the full trainer config (0 when absent: plain GRPO)."""
    pl = config.actor_rollout_ref.actor.get("policy_loss", {}) or {}
    eta = float(pl.get("lopti_eta", 0.0) or 0.0)
    if not 0.0 <= eta < 1.0:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.lopti_eta must be in [0, 1); got {eta}"
        )
    return eta


class LoptiTrainerMixin:
    """Lopti's two-pass actor update for verl's v1 `PPOTrainer` (TransferQueue batches).

    `_update_actor` reads advantages/π_old/response_mask of the rollout batch, writes pass 1's
    masked advantages and KL mask, runs the parent `_update_actor` (one sweep over all
    minibatches, one optimizer step each), then does the same for pass 2, and finally restores
    the full advantages for verl's metrics. Losses and clip fractions are summed over the
    passes (they add up to the single-pass values), other metrics averaged; plus
    ``actor/lopti_low_token_frac`` and ``actor/lopti_<pass>/pg_loss``. With η = 0 it is the
    parent update, unchanged.

    Note: verl advances the LR scheduler once per `update_actor` call, so with Lopti the
    scheduler steps twice per rollout batch (matters only for warmup/decay schedules).
    """

    def on_init_end(self):
        super().on_init_end()
        if lopti_eta_from(self.config) > 0 and self.config.actor_rollout_ref.actor.get(
            "use_kl_loss", False
        ):
            from verl.utils.config import omega_conf_to_dataclass

            actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
            self.actor_rollout_wg.set_loss_fn(partial(lopti_ppo_loss, config=actor_config))

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


def _register_trainer() -> None:
    """Register `TRAINER_MODE` with verl's v1 trainer registry when it is importable.

    verl's v1 trainers need `transfer_queue` (a GPU-cluster dependency); without it only the
    loss is registered and `LoptiTrainerMixin` can still be combined with a trainer by hand.
    """
    try:
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
        from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
    except ImportError:
        return
    if TRAINER_MODE not in TRAINER_REGISTRY:
        trainer = type("LoptiPPOTrainerSync", (LoptiTrainerMixin, PPOTrainerSync), {})
        register_trainer(TRAINER_MODE)(trainer)


register()
