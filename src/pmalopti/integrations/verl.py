"""AR and Lopti inside verl (the engine the paper, arXiv 2505.12929, was trained with).

Thin around `pmalopti.rl`; verl's own trainer, workers and loss do everything else:

1. A policy loss registered in verl as ``"pmalopti_ar"``: Advantage Reweighting
   (α·π_old + 1 − α)·Â computed from ``old_log_prob``, then verl's own "vanilla" clipped loss
   (dual clip, rollout-IS weights, aggregation unchanged). Its knobs are fields of
   `PmaloptiPolicyLossConfig`, selected with ``actor_rollout_ref.actor.policy_loss._target_``.
2. `pmalopti_ppo_loss`: verl's ``ppo_loss`` (the engine's loss function) with three options the
   paper's runs need: the KL term restricted to the current Lopti pass (``KL_MASK_KEY``), the
   authors' k3 clamp (``kl_log_ratio_clamp``: 5, verl 20) and the authors' normalisation
   (``micro_token_mean``: token-mean per micro-batch ÷ accumulation steps, instead of verl
   0.9.1's token-mean over the whole minibatch).
3. `lopti_batches`: a padded rollout batch → the batches of Lopti's two passes.
4. The v1 trainer mode ``"pmalopti_lopti"`` (`pmalopti.integrations.verl_trainer`): verl's
   *sync* trainer (same replay buffer, dataloader and checkpoints) running ``update_actor``
   once per Lopti pass and installing `pmalopti_ppo_loss` in the actor workers.

Workers must import this module so the registrations exist in every Ray process: set
``VERL_USE_EXTERNAL_MODULES=pmalopti.integrations.verl`` (verl imports it on ``import verl``)
and forward it to Ray (see examples/verl/grpo_kk_lopti.sh).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import torch

from pmalopti.rl import (
    KL_LOG_RATIO_CLAMP_VERL,
    kl_k3,
    lopti_split,
    response_token_count,
    reweight_advantages,
)

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
_K3_NAMES = ("low_var_kl", "k3")
# True while `pmalopti_ppo_loss` runs: the policy loss refuses options only that loss implements.
_IN_PMALOPTI_LOSS = contextvars.ContextVar("pmalopti_in_ppo_loss", default=False)


@dataclass
class PmaloptiPolicyLossConfig(PolicyLossConfig):
    """verl's PolicyLossConfig plus the knobs of arXiv 2505.12929 and of its authors' code.

    Select it in the verl config with
    ``actor_rollout_ref.actor.policy_loss._target_=pmalopti.integrations.verl.PmaloptiPolicyLossConfig``.
    ``lopti_eta``, ``micro_token_mean`` and ``kl_log_ratio_clamp`` need
    ``trainer.v1.trainer_mode=pmalopti_lopti`` (the trainer that installs `pmalopti_ppo_loss`).
    """

    ar_alpha: float = 0.0
    """AR strength α in [0, 1]: advantages scaled by α·π_old + 1 − α (paper: 0.3 K&K, 0.1 math)."""

    lopti_eta: float = 0.0
    """Lopti threshold η in [0, 1): tokens with π_old < η are updated first. 0 disables Lopti."""

    micro_token_mean: bool = False
    """True: the authors' normalisation, token-mean per micro-batch ÷ micro-batches per minibatch
    (needs loss_agg_mode token-mean and use_dynamic_bsz false). False: verl 0.9.1's token-mean
    over the minibatch's tokens on all ranks."""

    kl_log_ratio_clamp: float = KL_LOG_RATIO_CLAMP_VERL
    """Bound on log π_ref − log π inside the k3 KL: 20 as verl 0.9.1, 5 as the authors' code."""

    def __post_init__(self):
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()
        if not 0.0 <= self.ar_alpha <= 1.0:
            raise ValueError(f"policy_loss.ar_alpha must be in [0, 1]; got {self.ar_alpha}")
        if not 0.0 <= self.lopti_eta < 1.0:
            raise ValueError(f"policy_loss.lopti_eta must be in [0, 1); got {self.lopti_eta}")
        if not self.kl_log_ratio_clamp > 0:
            raise ValueError(
                f"policy_loss.kl_log_ratio_clamp must be > 0; got {self.kl_log_ratio_clamp}"
            )


def _policy_loss_field(config: Any, name: str) -> Any:
    """`name` from config.policy_loss (dataclass or DictConfig), with a message if absent."""
    policy_loss = config.get("policy_loss") if config is not None else None
    value = policy_loss.get(name) if policy_loss is not None else None
    if value is None:
        raise ValueError(
            f"loss_mode {LOSS_MODE!r} needs actor_rollout_ref.actor.policy_loss.{name}; set "
            "policy_loss._target_=pmalopti.integrations.verl.PmaloptiPolicyLossConfig"
        )
    return value


def _needs_pmalopti_loss(policy_loss: Any) -> list[str]:
    """The options set in `policy_loss` that only `pmalopti_ppo_loss` and its trainer implement."""
    on = []
    if float(policy_loss.get("lopti_eta", 0.0) or 0.0) > 0:
        on.append("lopti_eta")
    if policy_loss.get("micro_token_mean", False):
        on.append("micro_token_mean")
    if float(policy_loss.get("kl_log_ratio_clamp", KL_LOG_RATIO_CLAMP_VERL)) != (
        KL_LOG_RATIO_CLAMP_VERL
    ):
        on.append("kl_log_ratio_clamp")
    return on


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
    alpha = float(_policy_loss_field(config, "ar_alpha"))
    needs = _needs_pmalopti_loss(config.policy_loss)
    if needs and not _IN_PMALOPTI_LOSS.get():
        raise ValueError(
            f"policy_loss.{needs[0]} is set but verl's own loss function is running: set "
            f"trainer.v1.trainer_mode={TRAINER_MODE} (it installs pmalopti_ppo_loss)"
        )
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
    try:
        from pmalopti.integrations.verl_trainer import register_trainer
    except ImportError:  # verl's v1 trainer needs `transfer_queue` (verl's verl-core extra)
        return
    register_trainer()


# --- the engine loss: Lopti's KL mask, the authors' normalisation and k3 clamp ----------------


def check_actor_config(actor: Any) -> None:
    """Refuse an actor config (dataclass or DictConfig) where the policy-loss options are inexact."""
    pl = actor.get("policy_loss") or {}
    if pl.get("micro_token_mean", False):
        if actor.get("loss_agg_mode") != "token-mean":
            raise ValueError(
                "policy_loss.micro_token_mean needs actor.loss_agg_mode=token-mean; got "
                f"{actor.get('loss_agg_mode')!r}"
            )
        if actor.get("use_dynamic_bsz", False):
            raise ValueError(
                "policy_loss.micro_token_mean needs actor.use_dynamic_bsz=false (the authors' "
                "fixed micro-batches: ppo_micro_batch_size_per_gpu)"
            )
    clamp = float(pl.get("kl_log_ratio_clamp", KL_LOG_RATIO_CLAMP_VERL))
    kl_type = actor.get("kl_loss_type", "low_var_kl")
    if clamp != KL_LOG_RATIO_CLAMP_VERL and kl_type not in _K3_NAMES:
        raise ValueError(
            f"policy_loss.kl_log_ratio_clamp applies to the k3 KL only; kl_loss_type is {kl_type!r}"
        )


def _micro_batches_per_minibatch(data: Any) -> int:
    """Gradient-accumulation steps of this rank's minibatch, from the engine's micro-batch info."""
    from verl.utils import tensordict_utils as tu

    if tu.get_non_tensor_data(data=data, key="use_dynamic_bsz", default=False):
        raise ValueError(
            "policy_loss.micro_token_mean needs actor.use_dynamic_bsz=false (fixed micro-batches)"
        )
    per_gpu = int(tu.get_non_tensor_data(data=data, key="micro_batch_size_per_gpu", default=0))
    global_bs = int(data["global_batch_size"])
    dp = int(data["dp_size"])
    if per_gpu <= 0 or global_bs % (dp * per_gpu):
        raise ValueError(
            f"policy_loss.micro_token_mean: the minibatch ({global_bs} sequences on {dp} ranks) is "
            f"not a whole number of micro-batches of {per_gpu}"
        )
    return global_bs // (dp * per_gpu)


def _with_micro_batch_denominator(data: Any) -> Any:
    """A shallow copy of the micro-batch whose token-mean denominator is the authors' one:
    this micro-batch's response tokens × the micro-batches of the minibatch, on this rank alone
    (FSDP averages the ranks' gradients, as the authors' `loss / gradient_accumulation`)."""
    from verl.utils import tensordict_utils as tu

    n_micro = _micro_batches_per_minibatch(data)
    mask = data.select("response_mask").to_padded_tensor()["response_mask"]  # (b, T)
    out = data.copy()
    tu.assign_non_tensor(out, batch_num_tokens=max(1, response_token_count(mask)) * n_micro)
    tu.assign_non_tensor(out, dp_size=1)
    return out


def pmalopti_ppo_loss(config: Any, model_output: dict, data: Any, dp_group: Any = None):
    """verl's ``ppo_loss`` for one micro-batch, with the paper-run options of `config.policy_loss`.

    - ``micro_token_mean``: every token-mean term (policy, entropy, KL) divides by this
      micro-batch's tokens × its minibatch's micro-batches, not by the minibatch's tokens.
    - KL restricted to ``data[KL_MASK_KEY]`` when present (Lopti's pass) and computed with
      ``kl_log_ratio_clamp``: verl's β·agg(KL) is replaced by β·agg(mask · k3) with the same
      aggregation and denominators — value and gradient exactly, verl's loss kept otherwise.
    Without those options it is verl's ``ppo_loss`` exactly.
    """
    from verl.utils.metric import Metric
    from verl.workers.utils.losses import ppo_loss
    from verl.workers.utils.padding import no_padding_2_padding

    pl = config.policy_loss
    if pl.get("micro_token_mean", False):
        check_actor_config(config)
        data = _with_micro_batch_denominator(data)
    token = _IN_PMALOPTI_LOSS.set(True)
    try:
        loss, metrics = ppo_loss(config, model_output, data, dp_group)
    finally:
        _IN_PMALOPTI_LOSS.reset(token)
    clamp = float(pl.get("kl_log_ratio_clamp", KL_LOG_RATIO_CLAMP_VERL))
    has_mask = KL_MASK_KEY in data.keys()  # noqa: SIM118 (TensorDict)
    if not config.use_kl_loss or (not has_mask and clamp == KL_LOG_RATIO_CLAMP_VERL):
        return loss, metrics
    check_actor_config(config)
    log_prob = no_padding_2_padding(model_output["log_probs"], data)  # (B, T)
    fields = ["response_mask", "ref_log_prob"] + ([KL_MASK_KEY] if has_mask else [])
    sel = data.select(*fields).to_padded_tensor()
    response_mask = sel["response_mask"].to(bool)  # (B, T)
    ref = sel["ref_log_prob"]  # (B, T)
    verls = kl_penalty(logprob=log_prob, ref_logprob=ref, kl_penalty=config.kl_loss_type)  # (B, T)
    ours = (
        verls if clamp == KL_LOG_RATIO_CLAMP_VERL else kl_k3(log_prob, ref, log_ratio_clamp=clamp)
    )
    if has_mask:
        ours = ours * sel[KL_MASK_KEY].to(ours.dtype)  # (B, T)
    delta = agg_loss(
        loss_mat=ours - verls, loss_mask=response_mask, loss_agg_mode=config.loss_agg_mode,
        **config.global_batch_info,
    )  # fmt: skip
    loss = loss + delta * config.kl_loss_coef
    old = metrics.get("kl_loss")
    if isinstance(old, Metric):
        kept = [v + float(delta.detach()) for v in old.values]  # one value per micro-batch call
        metrics["kl_loss"] = Metric(aggregation=old.aggregation)
        metrics["kl_loss"].extend(kept)
    return loss, metrics


# --- Lopti's batches ---------------------------------------------------------------------------


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
    for name, part in (("low", low), ("high", high)):
        tensors = batch.batch.copy()  # shallow: shares every untouched tensor
        tensors["advantages"] = adv * part.to(adv.dtype)
        tensors[KL_MASK_KEY] = part.to(adv.dtype)
        out.append(
            DataProto(
                batch=tensors,
                non_tensor_batch=dict(batch.non_tensor_batch),
                meta_info={**batch.meta_info, "lopti_pass": name},
            )
        )
    return out[0], out[1]


def lopti_eta_from(config: Any) -> float:
    """η from the full trainer config (0 when absent: plain GRPO)."""
    pl = config.actor_rollout_ref.actor.get("policy_loss", {}) or {}
    eta = float(pl.get("lopti_eta", 0.0) or 0.0)
    if not 0.0 <= eta < 1.0:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.lopti_eta must be in [0, 1); got {eta}"
        )
    return eta


register()
