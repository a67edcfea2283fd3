"""pmalopti.rl: advantages, AR, Lopti masks and the policy loss, checked against references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pmalopti.rl import (
    AGG_MODES,
    group_advantages,
    kl_k3,
    lopti_passes,
    lopti_split,
    loss_denominator,
    policy_loss,
    reweight_advantages,
)

B, T, V = 6, 7, 11


def _random_case(seed: int = 0, dtype=torch.float64):
    """Tensors with clipped (|log-ratio| ~ 0.5), dual-clipped (ratio > c, Â < 0) and masked tokens."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3  # (B, T)
    delta = torch.randn(B, T, generator=g, dtype=dtype) * 0.4  # (B, T)
    delta[0, :3] = 2.0  # ratio e^2 > c = 3 → dual clip on a negative advantage row
    logp = old + delta  # (B, T)
    adv = torch.randn(B, generator=g, dtype=dtype)  # (B,)
    adv[0] = -1.3
    ref = old + torch.randn(B, T, generator=g, dtype=dtype) * 0.3  # (B, T)
    mask = torch.rand(B, T, generator=g) > 0.25  # (B, T)
    mask[:, 0] = True
    mask[-1] = False  # a fully masked sequence
    return logp, old, adv, ref, mask


def _reference_loss(
    logp, old, adv, ref, mask, kl_mask, *, agg, clip_low, clip_high, c, beta, denom=None
):
    """docs/design.md's formulas, element by element in python floats."""
    rows = []
    for i in range(B):
        row = []
        for t in range(T):
            a = float(adv[i])
            ratio = math.exp(max(-20.0, min(20.0, float(logp[i, t] - old[i, t]))))
            clipped_ratio = min(max(ratio, 1 - clip_low), 1 + clip_high)
            pg = max(-a * ratio, -a * clipped_ratio)
            if a < 0:
                pg = min(pg, -a * c)
            d = float(ref[i, t] - logp[i, t])
            kl = min(10.0, math.exp(d) - d - 1) if kl_mask[i, t] else 0.0
            row.append((pg + beta * kl) if mask[i, t] else None)
        rows.append(row)
    tokens = [x for r in rows for x in r if x is not None]
    seqs = [[x for x in r if x is not None] for r in rows]
    seqs = [s for s in seqs if s]
    if agg in ("token-mean", "micro-token-mean"):  # one micro-batch: the two coincide
        return sum(tokens) / (denom or len(tokens))
    if agg == "seq-mean-token-mean":
        return sum(sum(s) / len(s) for s in seqs) / (denom or len(seqs))
    return sum(sum(s) for s in seqs) / (denom or len(seqs)) / T


@pytest.mark.parametrize("agg", AGG_MODES)
def test_policy_loss_equals_a_float64_reimplementation_of_the_design_formulas(agg):
    logp, old, adv, ref, mask = _random_case()
    kl_mask = mask & (torch.arange(T) % 2 == 0)
    kw = dict(clip_low=0.2, clip_high=0.24, c=3.0, beta=0.05)
    loss, metrics = policy_loss(
        logp, old, adv, mask, clip_low=0.2, clip_high=0.24, clip_c=3.0,
        ref_logprobs=ref, kl_coef=0.05, kl_mask=kl_mask, agg=agg,
    )  # fmt: skip
    expected = _reference_loss(logp, old, adv, ref, mask, kl_mask, agg=agg, **kw)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # the random case really exercises both clips
    assert metrics["actor/pg_clipfrac"] > 0
    assert metrics["actor/pg_clipfrac_lower"] > 0


def test_policy_loss_with_an_explicit_denominator_divides_by_it():
    logp, old, adv, ref, mask = _random_case(1)
    kw = dict(clip_low=0.2, clip_high=0.2, c=3.0, beta=0.0)
    loss, _ = policy_loss(logp, old, adv, mask, denom=100)
    expected = _reference_loss(logp, old, adv, ref, mask, mask, agg="token-mean", denom=100, **kw)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_kl_term_is_skipped_without_a_reference_or_with_zero_coefficient():
    logp, old, adv, ref, mask = _random_case(2)
    plain, m0 = policy_loss(logp, old, adv, mask)
    zero_beta, m1 = policy_loss(logp, old, adv, mask, ref_logprobs=ref, kl_coef=0.0)
    assert torch.equal(plain, zero_beta)
    assert "actor/kl" not in m0 and "actor/kl" not in m1
    _, m2 = policy_loss(logp, old, adv, mask, ref_logprobs=ref, kl_coef=1e-3)
    assert m2["actor/kl"] > 0


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    lp = torch.log(torch.tensor([[0.2, 0.5, 0.9]]))
    assert torch.equal(kl_k3(lp, lp), torch.zeros(1, 3))
    assert (kl_k3(lp, lp + 0.3) > 0).all()


def test_group_advantages_standardise_each_group_with_the_unbiased_std():
    r = torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0, 5.0])
    adv = group_advantages(r, 3)
    for k in range(2):
        grp = r[3 * k : 3 * k + 3]
        expected = (grp - grp.mean()) / (grp.std(unbiased=True) + 1e-6)
        torch.testing.assert_close(adv[3 * k : 3 * k + 3], expected)
    torch.testing.assert_close(group_advantages(r, 3, scale="none")[:3], r[:3] - r[:3].mean())


def test_group_advantages_of_a_constant_group_are_zero():
    assert torch.equal(group_advantages(torch.full((4,), 2.5), 4), torch.zeros(4))


def test_group_advantages_refuse_a_group_size_that_does_not_divide_the_batch():
    with pytest.raises(ValueError, match="group_size 4 does not divide"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(6), 3, scale="batch")


def test_advantage_reweighting_with_alpha_zero_returns_the_advantages_unchanged():
    _, old, adv, _, _ = _random_case(3, torch.float32)
    out = reweight_advantages(adv, old, 0.0)
    assert torch.equal(out, adv[:, None].expand(B, T))
    adv_tok = torch.randn(B, T)
    assert torch.equal(reweight_advantages(adv_tok, old, 0.0), adv_tok)


def test_advantage_reweighting_scales_each_token_by_alpha_pi_plus_one_minus_alpha():
    _, old, adv, _, _ = _random_case(4)
    out = reweight_advantages(adv, old, 0.3)
    torch.testing.assert_close(out, (0.3 * old.exp() + 0.7) * adv[:, None])
    torch.testing.assert_close(reweight_advantages(adv, old, 1.0), old.exp() * adv[:, None])


def test_advantage_reweighting_rejects_alpha_outside_unit_interval_and_bad_shapes():
    with pytest.raises(ValueError, match="alpha must be in"):
        reweight_advantages(torch.zeros(2), torch.zeros(2, 3), 1.5)
    with pytest.raises(ValueError, match=r"advantages has shape \(3,\).*old_logprobs"):
        reweight_advantages(torch.zeros(3), torch.zeros(2, 3), 0.3)


def test_lopti_split_partitions_the_response_tokens_at_eta():
    _, old, _, _, mask = _random_case(5)
    low, high = lopti_split(old, mask, 0.5)
    assert torch.equal(low | high, mask)
    assert not (low & high).any()
    assert (old.exp()[low] < 0.5).all() and (old.exp()[high] >= 0.5).all()
    low0, high0 = lopti_split(old, mask, 0.0)
    assert not low0.any() and torch.equal(high0, mask)


def test_lopti_split_rejects_eta_outside_zero_one():
    with pytest.raises(ValueError, match="eta must be in"):
        lopti_split(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool), 1.0)


def test_lopti_with_eta_unset_is_a_single_pass_over_all_tokens():
    _, old, adv, _, mask = _random_case(6)
    for eta in (None, 0):
        (only,) = lopti_passes(adv, old, mask, eta)
        assert only.name == "all"
        assert torch.equal(only.advantages, adv[:, None].expand(B, T))
        assert torch.equal(only.kl_mask, mask)


def test_lopti_passes_put_low_tokens_first_and_their_advantages_add_up():
    _, old, adv, _, mask = _random_case(7)
    first, second = lopti_passes(adv, old, mask, 0.5)
    assert (first.name, second.name) == ("low", "high")
    low, high = lopti_split(old, mask, 0.5)
    assert torch.equal(first.kl_mask, low) and torch.equal(second.kl_mask, high)
    assert torch.equal(
        (first.advantages + second.advantages)[mask], adv[:, None].expand(B, T)[mask]
    )
    assert (first.advantages[high] == 0).all() and (second.advantages[low] == 0).all()


def test_policy_loss_rejects_unknown_aggregation_and_mismatched_shapes():
    logp, old, adv, _, mask = _random_case(8)
    with pytest.raises(ValueError, match="agg: 'sum'"):
        policy_loss(logp, old, adv, mask, agg="sum")
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(6, 6\) but logprobs"):
        policy_loss(logp, old[:, :6], adv, mask)
    with pytest.raises(ValueError, match="clip_c"):
        policy_loss(logp, old, adv, mask, clip_c=1.0)


# --- gradients through a tiny "model": logits = Linear(x) --------------------------------------


def _linear_policy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 5, generator=g)  # (B, T, H)
    lin = torch.nn.Linear(5, V)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(V, 5, generator=g) * 1.5)
        lin.bias.copy_(torch.randn(V, generator=g))
    tokens = torch.randint(0, V, (B, T), generator=g)  # (B, T)
    adv = torch.randn(B, generator=g)  # (B,)
    mask = torch.rand(B, T, generator=g) > 0.2  # (B, T)
    mask[:, 0] = True

    def logprobs(rows=slice(None)):
        logits = lin(x[rows]) / 0.7  # (b, T, V), temperature 0.7
        return torch.log_softmax(logits, -1).gather(-1, tokens[rows, :, None]).squeeze(-1)

    with torch.no_grad():
        lp = logprobs()
        old = lp + torch.randn(B, T, generator=g) * 0.3  # (B, T) stale policy → some clipping
        ref = lp + torch.randn(B, T, generator=g) * 0.2
    return lin, logprobs, old, ref, adv, mask


def _grad(lin, loss):
    return torch.autograd.grad(loss, list(lin.parameters()))


@pytest.mark.parametrize("agg", AGG_MODES)
def test_lopti_pass_gradients_add_up_to_the_single_pass_gradient(agg):
    lin, logprobs, old, ref, adv, mask = _linear_policy()
    adv_ar = reweight_advantages(adv, old, 0.3)  # AR first, then the split
    kw = dict(
        ref_logprobs=ref, kl_coef=0.1, agg=agg, clip_high=0.24, denom=loss_denominator(mask, agg)
    )
    base = _grad(lin, policy_loss(logprobs(), old, adv_ar, mask, **kw)[0])
    passes = lopti_passes(adv_ar, old, mask, 0.5)
    assert len(passes) == 2 and passes[0].kl_mask.any() and passes[1].kl_mask.any()
    summed = [torch.zeros_like(p) for p in lin.parameters()]
    for p in passes:
        g = _grad(lin, policy_loss(logprobs(), old, p.advantages, mask, kl_mask=p.kl_mask, **kw)[0])
        summed = [s + gi for s, gi in zip(summed, g, strict=True)]
    for a, b in zip(base, summed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_two_micro_batches_with_the_minibatch_denominator_give_the_one_batch_gradient(agg):
    lin, logprobs, old, ref, adv, mask = _linear_policy(1)
    denom = loss_denominator(mask, agg)
    kw = dict(kl_coef=0.05, agg=agg)
    whole = _grad(lin, policy_loss(logprobs(), old, adv, mask, ref_logprobs=ref, **kw)[0])
    summed = [torch.zeros_like(p) for p in lin.parameters()]
    for rows in (slice(0, 2), slice(2, B)):
        loss, _ = policy_loss(
            logprobs(rows),
            old[rows],
            adv[rows],
            mask[rows],
            ref_logprobs=ref[rows],
            denom=denom,
            **kw,
        )
        summed = [s + g for s, g in zip(summed, _grad(lin, loss), strict=True)]
    for a, b in zip(whole, summed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    eta=st.floats(0.05, 0.95),
    alpha=st.floats(0.0, 1.0),
    agg=st.sampled_from(AGG_MODES),
)
def test_lopti_pass_losses_add_up_to_the_single_pass_loss(seed, eta, alpha, agg):
    logp, old, adv, ref, mask = _random_case(seed)
    adv_ar = reweight_advantages(adv, old, alpha)
    kw = dict(ref_logprobs=ref, kl_coef=0.1, agg=agg, clip_c=3.0, denom=loss_denominator(mask, agg))
    base, _ = policy_loss(logp, old, adv_ar, mask, **kw)
    passes = lopti_passes(adv_ar, old, mask, eta)
    total = sum(
        policy_loss(logp, old, p.advantages, mask, kl_mask=p.kl_mask, **kw)[0] for p in passes
    )
    torch.testing.assert_close(total, base, rtol=1e-12, atol=1e-12)
