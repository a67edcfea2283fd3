"""The paper authors' loss normalisation and k3 clamp, against a float64 re-implementation.

The authors' verl fork (arXiv 2505.12929's code, `dp_actor.py` + `core_algos.py`) computes, per
micro-batch: ratio = exp(logπ − logπ_old); the dual-clipped loss; token-mean over the micro-batch's
response tokens (`masked_mean`); k3 with d = clamp(logπ_ref − logπ, ±5), clamped to ±10, times the
Lopti `kl_entropy_mask`, token-mean too; then `(pg + β·kl) / gradient_accumulation` with
gradient_accumulation = mini-batch size / micro-batch size, summed by `.backward()`.
"""

from __future__ import annotations

import pytest
import torch

from pmalopti.rl import (
    KL_LOG_RATIO_CLAMP_AUTHORS,
    KL_LOG_RATIO_CLAMP_VERL,
    aggregate,
    kl_k3,
    lopti_passes,
    loss_denominator,
    micro_batch_denominators,
    policy_loss,
)

CLIP_LOW, CLIP_HIGH, C, BETA = 0.2, 0.24, 10.0, 0.1
# Micro-batches of 3 sequences padded to their own longest response: (lengths of each row).
MICRO_LENGTHS = [(9, 2, 5), (1, 2, 1), (7, 7, 3), (4, 1, 2)]


def _micro_batches(seed: int = 0):
    """Padded micro-batches with different response lengths; garbage (finite) in the padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in MICRO_LENGTHS:
        b, t = len(lengths), max(lengths)
        mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (b, t)
        old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 4  # (b, t)
        logp = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.4
        ref = logp + torch.randn(b, t, generator=g, dtype=torch.float64) * 4  # some |d| > 5
        adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).clone()
        adv[0] = -1.5
        logp[0, 0] = old[0, 0] + 3.0  # ratio e^3 > c·… : dual clip on a negative advantage
        for x in (old, logp, ref):
            x[~mask] = 123.0  # padding must not leak
        out.append((logp.requires_grad_(), old, adv, ref, mask))
    return out


def _authors_micro_loss(logp, old, adv, ref, mask, kl_mask, grad_accum):
    """One micro-batch's contribution, written as the authors' code computes it (float64)."""
    m = mask.to(torch.float64)
    ratio = torch.exp(logp - old)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - CLIP_LOW, 1 + CLIP_HIGH)
    clip1 = torch.maximum(l1, l2)
    clip2 = torch.min(-adv * C, clip1)
    pg_mat = torch.where(adv < 0, clip2, clip1)
    pg = (pg_mat * m).sum() / m.sum()
    d = torch.clamp(ref - logp, min=-5, max=5)
    kld = torch.clamp(torch.exp(d) - d - 1, min=-10, max=10) * kl_mask.to(torch.float64)
    kl = (kld * m).sum() / m.sum()
    return (pg + BETA * kl) / grad_accum


def _ours(micros, agg, kl_masks, *, clamp, advantages=None):
    denoms = micro_batch_denominators([mb[-1] for mb in micros], agg)
    total = 0.0
    for i, ((logp, old, adv, ref, mask), denom) in enumerate(zip(micros, denoms, strict=True)):
        loss, _ = policy_loss(
            logp, old, adv if advantages is None else advantages[i], mask,
            clip_low=CLIP_LOW, clip_high=CLIP_HIGH, clip_c=C, ref_logprobs=ref, kl_coef=BETA,
            kl_mask=kl_masks[i], kl_log_ratio_clamp=clamp, agg=agg, denom=denom,
        )  # fmt: skip
        total = total + loss
    return total


def _grads(micros, loss):
    return torch.autograd.grad(loss, [mb[0] for mb in micros])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_micro_token_mean_with_clamp_5_equals_the_authors_loss_and_gradient(seed):
    micros = _micro_batches(seed)
    kl_masks = [mb[-1] for mb in micros]
    n = len(micros)
    theirs = sum(_authors_micro_loss(*mb, mb[-1], n) for mb in micros)
    ours = _ours(micros, "micro-token-mean", kl_masks, clamp=KL_LOG_RATIO_CLAMP_AUTHORS)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(micros, ours), _grads(micros, theirs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lopti_passes_under_the_authors_normalisation_match_their_masked_kl_and_add_up():
    micros = _micro_batches(3)
    n = len(micros)
    single = _ours(micros, "micro-token-mean", [mb[-1] for mb in micros], clamp=5)
    summed = 0.0
    per_micro = [lopti_passes(mb[2], mb[1], mb[-1], 0.5) for mb in micros]
    for k in range(2):  # pass 1 (low tokens), pass 2 (high tokens)
        advs = [passes[k].advantages for passes in per_micro]
        kls = [passes[k].kl_mask for passes in per_micro]
        ours = _ours(micros, "micro-token-mean", kls, clamp=5, advantages=advs)
        theirs = sum(
            _authors_micro_loss(mb[0], mb[1], a, mb[3], mb[4], km, n)
            for mb, a, km in zip(micros, advs, kls, strict=True)
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        summed = summed + ours
    torch.testing.assert_close(summed, single, rtol=1e-12, atol=1e-12)


def test_per_micro_batch_token_mean_differs_from_the_minibatch_token_mean():
    micros = _micro_batches(0)
    kl_masks = [mb[-1] for mb in micros]
    micro = _ours(micros, "micro-token-mean", kl_masks, clamp=20)
    whole = _ours(micros, "token-mean", kl_masks, clamp=20)
    # different token counts per micro-batch (16, 4, 17, 7): the two normalisations disagree
    assert abs(float(micro.detach() - whole.detach())) > 1e-2
    # token-mean's micro-batches share the minibatch denominator (all its response tokens)
    tokens = sum(int(mb[-1].sum()) for mb in micros)
    denoms = micro_batch_denominators([mb[-1] for mb in micros], "token-mean")
    assert denoms == [tokens] * len(micros)


def test_micro_batch_denominators_are_token_counts_times_accumulation_steps():
    masks = [mb[-1] for mb in _micro_batches(0)]
    counts = [int(m.sum()) for m in masks]
    assert micro_batch_denominators(masks, "micro-token-mean") == [c * 4 for c in counts]
    empty = torch.zeros(2, 3, dtype=torch.bool)  # no response token: contributes 0, no division
    assert micro_batch_denominators([empty, masks[0]], "micro-token-mean") == [2, counts[0] * 2]
    seqs = sum(int((m.sum(-1) > 0).sum()) for m in masks)
    assert micro_batch_denominators(masks, "seq-mean-token-mean") == [seqs] * 4


def test_one_micro_batch_of_micro_token_mean_is_the_token_mean():
    mask = _micro_batches(1)[0][-1]
    (denom,) = micro_batch_denominators([mask], "micro-token-mean")
    assert denom == loss_denominator(mask, "token-mean")
    loss_mat = torch.randn(mask.shape, dtype=torch.float64)
    torch.testing.assert_close(
        aggregate(loss_mat, mask, "micro-token-mean"), aggregate(loss_mat, mask, "token-mean")
    )


def test_k3_clamp_bound_changes_the_kl_only_beyond_the_bound():
    logp = torch.zeros(1, 6, dtype=torch.float64)
    d = torch.tensor([[-4.9, 0.3, 4.9, -8.0, 6.0, 30.0]], dtype=torch.float64)
    authors = kl_k3(logp, logp + d, log_ratio_clamp=KL_LOG_RATIO_CLAMP_AUTHORS)
    verl = kl_k3(logp, logp + d, log_ratio_clamp=KL_LOG_RATIO_CLAMP_VERL)
    torch.testing.assert_close(authors[:, :3], verl[:, :3], rtol=0, atol=0)
    dc = d.clamp(-5, 5)
    torch.testing.assert_close(authors, (dc.exp() - dc - 1).clamp(-10, 10))
    # d = −8: 5 gives e^−5 + 5 − 1 ≈ 4.007, 20 gives e^−8 + 8 − 1 ≈ 7.000; for d > 2.6 both hit
    # the ±10 clamp of the estimate, so only negative d (π ≫ π_ref) tells the bounds apart
    assert float(authors[0, 3]) == pytest.approx(4.0067, abs=1e-4)
    assert float(verl[0, 3]) == pytest.approx(7.0003, abs=1e-4)
    assert float(authors[0, 4]) == float(verl[0, 4]) == 10.0
    # and the gradient: zero beyond the bound (the clamp cuts it), non-zero inside
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-8.0, -3.0]], dtype=torch.float64)
    (g5,) = torch.autograd.grad(kl_k3(lp, ref, log_ratio_clamp=5).sum(), lp)
    (g20,) = torch.autograd.grad(kl_k3(lp, ref, log_ratio_clamp=20).sum(), lp)
    assert g5[0, 0] == 0 and g20[0, 0] != 0
    assert g5[0, 1] == g20[0, 1] != 0


def test_k3_clamp_bound_must_be_positive():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="log_ratio_clamp"):
        kl_k3(x, x, log_ratio_clamp=0)
