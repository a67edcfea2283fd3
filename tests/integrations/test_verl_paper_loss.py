"""The paper authors' loss in verl: token-mean per micro-batch ÷ accumulation steps and the k3 clamp
at ±5, checked against a float64 re-implementation of their formulas on padded micro-batches."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig
from verl.workers.utils.losses import ppo_loss

import pmalopti.integrations.verl as pv
from pmalopti.rl import KL_LOG_RATIO_CLAMP_AUTHORS, lopti_split

ALPHA, BETA, C = 0.3, 0.05, 10.0
MICRO = 2  # sequences per micro-batch (ppo_micro_batch_size_per_gpu)


def _config(micro_token_mean=True, clamp=KL_LOG_RATIO_CLAMP_AUTHORS, **kw):
    policy_loss = pv.PmaloptiPolicyLossConfig(
        loss_mode=pv.LOSS_MODE, ar_alpha=ALPHA, micro_token_mean=micro_token_mean,
        kl_log_ratio_clamp=clamp,
    )  # fmt: skip
    return FSDPActorConfig(
        strategy="fsdp", rollout_n=2, ppo_micro_batch_size_per_gpu=MICRO,
        clip_ratio_low=0.2, clip_ratio_high=0.24, clip_ratio_c=C, use_kl_loss=True,
        kl_loss_coef=BETA, kl_loss_type="low_var_kl", policy_loss=policy_loss, **kw,
    )  # fmt: skip


def _minibatch(n=8, seed=0):
    """(B, T) float64 tensors of one rank's minibatch; uneven lengths, some |log π_ref − log π| > 5
    (the clamps differ there) and some ratios > c (the dual clip is active there)."""
    g = torch.Generator().manual_seed(seed)
    width = 9
    lens = torch.randint(1, width + 1, (n,), generator=g)
    lens[0], lens[1] = width, 1  # the first micro-batch: 10 tokens; others differ
    mask = (torch.arange(width)[None] < lens[:, None]).double()  # (B, T)
    old = -torch.rand(n, width, generator=g, dtype=torch.float64) * 3  # (B, T)
    logp = old + torch.randn(n, width, generator=g, dtype=torch.float64) * 0.3
    logp[2, 0] = old[2, 0] + 2.5  # ratio e^2.5 > c
    ref = old + torch.randn(n, width, generator=g, dtype=torch.float64) * 0.5
    ref[3, 0], ref[0, 1] = logp[3, 0] + 7.0, logp[0, 1] - 6.0  # beyond the ±5 clamp
    adv = torch.randn(n, generator=g, dtype=torch.float64)[:, None].expand(n, width) * mask
    adv[2] = -adv[2].abs()  # Â < 0 where the ratio is > c
    return logp.requires_grad_(), old, ref, adv, mask, lens


def _authors_micro_loss(logp, old, ref, adv, mask, n_micro):
    """The authors' `dp_actor` loss of one micro-batch, float64: vanilla PPO with dual clip on
    AR advantages, k3 with log-ratio clamped at ±5, token-means over this micro-batch's tokens,
    divided by the gradient-accumulation steps."""
    a = (ALPHA * old.exp() + 1 - ALPHA) * adv
    ratio = (logp - old).exp()
    l1, l2 = -a * ratio, -a * ratio.clamp(1 - 0.2, 1 + 0.24)
    clipped = torch.maximum(l1, l2)
    pg = torch.where(a < 0, torch.minimum(clipped, -a * C), clipped)
    d = (ref - logp).clamp(-5.0, 5.0)
    kl = (d.exp() - d - 1).clamp(-10.0, 10.0)
    pg_loss = (pg * mask).sum() / mask.sum()
    kl_loss = (kl * mask).sum() / mask.sum()
    return (pg_loss + BETA * kl_loss) / n_micro


def _engine_micro_batch(logp, old, ref, adv, mask, lens, *, global_bs, dp, global_tokens, kl_mask):
    """One micro-batch as verl's engine hands it to the loss: nested, prompt + response."""
    n = logp.shape[0]
    plen = torch.full((n,), 3)
    pieces = []
    for i in range(n):
        r = int(lens[i])
        pieces += [logp.new_zeros(int(plen[i]) - 1), logp[i, :r], logp.new_zeros(1)]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), (plen + lens).cumsum(0)])
    log_probs = torch.nested.nested_tensor_from_jagged(torch.cat(pieces), offsets=offsets)

    def resp(x):
        return torch.nested.as_nested_tensor(
            [x[i, : lens[i]] for i in range(n)], layout=torch.jagged
        )

    fields = {
        "prompts": torch.nested.as_nested_tensor(
            [torch.ones(int(p), dtype=torch.long) for p in plen], layout=torch.jagged
        ),
        "responses": resp(torch.ones_like(mask, dtype=torch.long)),
        "response_mask": resp(mask), "old_log_probs": resp(old), "advantages": resp(adv),
        "ref_log_prob": resp(ref),
    }  # fmt: skip
    if kl_mask is not None:
        fields[pv.KL_MASK_KEY] = resp(kl_mask)
    data = TensorDict(fields, batch_size=n)
    tu.assign_non_tensor(
        data, dp_size=dp, batch_num_tokens=global_tokens, global_batch_size=global_bs,
        micro_batch_size_per_gpu=MICRO, use_dynamic_bsz=False,
    )  # fmt: skip
    return {"log_probs": log_probs}, data


def _verl_rank_loss(cfg, logp, old, ref, adv, mask, lens, *, dp=1, kl_mask=None, loss=None):
    """Σ over this rank's micro-batches of the engine loss (what `backward` accumulates)."""
    loss_fn = loss or pv.pmalopti_ppo_loss
    global_bs, global_tokens = logp.shape[0] * dp, int(mask.sum()) * dp
    total = 0.0
    for s in range(0, logp.shape[0], MICRO):
        sl = slice(s, s + MICRO)
        width = int(lens[sl].max())  # each micro-batch padded on its own
        parts = [x[sl, :width] for x in (logp, old, ref, adv, mask)]
        km = None if kl_mask is None else kl_mask[sl, :width]
        out, data = _engine_micro_batch(
            *parts, lens[sl], global_bs=global_bs, dp=dp, global_tokens=global_tokens, kl_mask=km
        )
        total = total + loss_fn(cfg, out, data)[0]
    return total


@pytest.mark.parametrize("dp", [1, 2])
def test_micro_token_mean_loss_and_gradient_equal_the_authors_formulas_in_float64(dp):
    cfg = _config()
    ranks = [_minibatch(seed=s) for s in range(dp)]  # each rank: 8 sequences, 4 micro-batches
    ours = sum(_verl_rank_loss(cfg, *r, dp=dp) for r in ranks) / dp  # FSDP averages the ranks
    n_micro = 8 // MICRO
    ref = 0.0
    for logp, old, refp, adv, mask, lens in ranks:
        for s in range(0, 8, MICRO):
            sl = slice(s, s + MICRO)
            width = int(lens[sl].max())
            parts = [x[sl, :width] for x in (logp, old, refp, adv, mask)]
            ref = ref + _authors_micro_loss(*parts, n_micro)
    ref = ref / dp
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    leaves = [r[0] for r in ranks]
    for a, b in zip(
        torch.autograd.grad(ours, leaves), torch.autograd.grad(ref, leaves), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_verls_own_normalisation_differs_from_the_authors_on_uneven_micro_batches():
    logp, old, ref, adv, mask, lens = _minibatch(seed=3)
    authors = _verl_rank_loss(_config(), logp, old, ref, adv, mask, lens)
    verls = _verl_rank_loss(_config(micro_token_mean=False), logp, old, ref, adv, mask, lens)
    assert abs(float((authors - verls).detach())) > 1e-3


def test_without_the_options_the_engine_loss_is_verls_ppo_loss_exactly():
    cfg = _config(micro_token_mean=False, clamp=20.0)
    batch = _minibatch(seed=4)
    ours = _verl_rank_loss(cfg, *batch)
    theirs = _verl_rank_loss(cfg, *batch, loss=ppo_loss_with_our_policy_loss_allowed)
    assert torch.equal(ours, theirs)


def ppo_loss_with_our_policy_loss_allowed(config, model_output, data, dp_group=None):
    """verl's ppo_loss; the "pmalopti_ar" policy loss runs in it since no option needs ours."""
    return ppo_loss(config, model_output, data, dp_group)


def test_the_k3_clamp_bound_changes_the_loss_only_beyond_five():
    logp, old, ref, adv, mask, lens = _minibatch(seed=0)
    five = _verl_rank_loss(_config(clamp=5.0), logp, old, ref, adv, mask, lens)
    twenty = _verl_rank_loss(_config(clamp=20.0), logp, old, ref, adv, mask, lens)
    assert abs(float((five - twenty).detach())) > 1e-4  # two tokens have |log π_ref − log π| > 5
    near = (ref - (ref - logp).clamp(-4.0, 4.0)).detach().requires_grad_()  # every |d| ≤ 4
    a = _verl_rank_loss(_config(clamp=5.0), near, old, ref, adv, mask, lens)
    b = _verl_rank_loss(_config(clamp=20.0), near, old, ref, adv, mask, lens)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_lopti_passes_add_up_to_the_single_pass_under_the_authors_loss():
    logp, old, ref, adv, mask, lens = _minibatch(seed=5)
    cfg = _config()
    (single,) = torch.autograd.grad(_verl_rank_loss(cfg, logp, old, ref, adv, mask, lens), logp)
    low, high = lopti_split(old, mask, 0.5)
    summed = torch.zeros_like(logp)
    for part in (low, high):
        pa = adv * part
        loss = _verl_rank_loss(cfg, logp, old, ref, pa, mask, lens, kl_mask=part.double())
        summed += torch.autograd.grad(loss, logp)[0]
    torch.testing.assert_close(summed, single, rtol=1e-10, atol=1e-13)


def test_options_that_need_the_pmalopti_trainer_are_refused_under_verls_own_loss():
    logp, old, ref, adv, mask, lens = _minibatch(seed=6)
    with pytest.raises(ValueError, match="trainer_mode=pmalopti_lopti"):
        _verl_rank_loss(_config(), logp, old, ref, adv, mask, lens, loss=ppo_loss)


def test_micro_token_mean_refuses_sequence_aggregation_and_dynamic_batches():
    with pytest.raises(ValueError, match="loss_agg_mode=token-mean"):
        pv.check_actor_config(_config(loss_agg_mode="seq-mean-token-mean"))
    with pytest.raises(ValueError, match="use_dynamic_bsz"):
        pv.check_actor_config(
            {**_config(), "use_dynamic_bsz": True}  # check_actor_config reads a mapping too
        )
    with pytest.raises(ValueError, match="k3 KL only"):
        pv.check_actor_config({**_config(), "kl_loss_type": "mse"})
