"""The maths of GRPO with Advantage Reweighting and Lopti (arXiv 2505.12929), as pure tensor functions.

Shapes: B sequences (P prompts × G completions, groups consecutive), T response positions.
"""

from pmalopti.rl.advantages import group_advantages, reweight_advantages
from pmalopti.rl.diagnostics import (
    BUCKET_EDGES,
    BUCKET_LABELS,
    bucket_index,
    exact_bucket_grad_norms,
    logit_grad_norms,
    token_prob_diagnostics,
)
from pmalopti.rl.lopti import LoptiPass, lopti_passes, lopti_split, low_token_fraction
from pmalopti.rl.loss import (
    AGG_MODES,
    KL_LOG_RATIO_CLAMP_AUTHORS,
    KL_LOG_RATIO_CLAMP_VERL,
    Agg,
    aggregate,
    kl_k3,
    loss_denominator,
    masked_mean,
    masked_sum,
    micro_batch_denominators,
    policy_loss,
    response_token_count,
    sequence_count,
)

__all__ = [
    "AGG_MODES",
    "BUCKET_EDGES",
    "BUCKET_LABELS",
    "KL_LOG_RATIO_CLAMP_AUTHORS",
    "KL_LOG_RATIO_CLAMP_VERL",
    "Agg",
    "LoptiPass",
    "aggregate",
    "bucket_index",
    "exact_bucket_grad_norms",
    "group_advantages",
    "kl_k3",
    "logit_grad_norms",
    "lopti_passes",
    "lopti_split",
    "loss_denominator",
    "low_token_fraction",
    "masked_mean",
    "masked_sum",
    "micro_batch_denominators",
    "policy_loss",
    "response_token_count",
    "reweight_advantages",
    "sequence_count",
    "token_prob_diagnostics",
]
