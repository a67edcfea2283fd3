"""pmalopti.rl equals verl's own implementation (core_algos) on the same tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmalopti.rl import AGG_MODES, aggregate, group_advantages, kl_k3, policy_loss

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")

B, T = 8, 9
# verl 0.9.1's modes; "micro-token-mean" is the paper authors' (tests/rl/test_rl_paper_loss.py)
VERL_AGG_MODES = [a for a in AGG_MODES if a != "micro-token-mean"]


def _actor_config(**kw):
    """An ActorConfig built the way verl's trainer builds it (strategy and rollout_n required)."""
    from verl.workers.config import ActorConfig

    return ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=2, **kw)


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 4  # (B, T)
    logp = (old + torch.randn(B, T, generator=g) * 0.5).requires_grad_()  # (B, T)
    adv = torch.randn(B, generator=g)[:, None].expand(B, T).contiguous()  # (B, T)
    adv[1] = -2.0
    with torch.no_grad():
        logp[1, :4] = old[1, :4] + 2.5  # ratio > c for a negative advantage: dual clip
    mask = (torch.rand(B, T, generator=g) > 0.3).float()  # (B, T) verl uses float masks
    mask[:, 0] = 1
    mask[-1] = 0
    return logp, old, adv, mask


@pytest.mark.parametrize("agg", VERL_AGG_MODES)
def test_policy_loss_matches_verl_vanilla_loss_metrics_and_gradient(agg):
    logp, old, adv, mask = _case()
    cfg = _actor_config(
        clip_ratio_low=0.2, clip_ratio_high=0.24, clip_ratio_c=3.0, loss_agg_mode=agg
    )
    theirs, their_metrics = core_algos.compute_policy_loss_vanilla(
        old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask,
        loss_agg_mode=agg, config=cfg,
    )  # fmt: skip
    ours, metrics = policy_loss(
        logp, old, adv, mask, clip_low=0.2, clip_high=0.24, clip_c=3.0, agg=agg
    )
    torch.testing.assert_close(ours, theirs)
    for key, value in their_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert metrics["actor/pg_clipfrac_lower"] > 0
    (g_theirs,) = torch.autograd.grad(theirs, logp)
    (g_ours,) = torch.autograd.grad(ours, logp)
    torch.testing.assert_close(g_ours, g_theirs)


@pytest.mark.parametrize("agg", VERL_AGG_MODES)
def test_aggregation_matches_verl_agg_loss_with_and_without_global_denominators(agg):
    g = torch.Generator().manual_seed(1)
    loss_mat = torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.4).float()
    mask[2] = 0
    torch.testing.assert_close(
        aggregate(loss_mat, mask, agg), core_algos.agg_loss(loss_mat, mask, agg)
    )
    denom = 37 if agg == "token-mean" else 11
    theirs = core_algos.agg_loss(
        loss_mat, mask, agg, dp_size=1, batch_num_tokens=37, global_batch_size=11
    )
    torch.testing.assert_close(aggregate(loss_mat, mask, agg, denom=denom), theirs)


def test_k3_kl_matches_verl_low_var_kl_including_its_clamps():
    g = torch.Generator().manual_seed(2)
    logp = -torch.rand(B, T, generator=g) * 5
    ref = logp + torch.randn(B, T, generator=g) * 2
    ref[0, 0], ref[0, 1] = logp[0, 0] + 15, logp[0, 1] - 30  # beyond the ±10 / ±20 clamps
    torch.testing.assert_close(kl_k3(logp, ref), core_algos.kl_penalty(logp, ref, "low_var_kl"))
    assert kl_k3(logp, ref)[0, 0] == 10.0


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("group_size", [1, 4])
def test_group_advantages_match_verl_grpo_outcome_advantage(norm, group_size):
    g = torch.Generator().manual_seed(3)
    rewards = torch.randint(-3, 4, (B,), generator=g).float()
    rewards[:4] = 1.0  # one constant group
    mask = torch.ones(B, T)
    mask[:, 6:] = 0
    token_rewards = torch.zeros(B, T)
    token_rewards[:, 5] = rewards  # outcome reward on the last response token
    index = np.repeat(np.arange(B // group_size), group_size)
    theirs, _ = core_algos.compute_grpo_outcome_advantage(
        token_rewards, mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=norm
    )
    ours = group_advantages(rewards, group_size, scale="group" if norm else "none")
    torch.testing.assert_close(ours[:, None] * mask, theirs)
