"""The GRPO update phase: equivalences of Lopti's passes, accumulation and the plain baseline."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pmalopti.grpo.config import AlgoConfig
from pmalopti.grpo.rollout import response_logprobs, sample_loop, tokenize_prompts
from pmalopti.grpo.update import UpdateBatch, update_policy
from pmalopti.models.tiny import tiny_model_and_tokenizer
from pmalopti.rl import policy_loss


@pytest.fixture(scope="module")
def setup():
    """A tiny policy and one real rollout batch of 16 sequences with π_old from the policy."""
    model, tok = tiny_model_and_tokenizer(seed=0, hidden_size=32, num_layers=2, num_heads=4)
    with torch.no_grad():  # sharper logits: a random init is near-uniform, every π_old < 0.5
        model.model.norm.weight.mul_(25.0)
    prompts = [f"{a} + 3 =" for a in range(8) for _ in range(2)]
    ids, mask = tokenize_prompts(tok, prompts, 64, "cpu")
    g = torch.Generator().manual_seed(0)
    roll = sample_loop(model, tok, ids, mask, max_new_tokens=6, temperature=1.0, generator=g)
    with torch.no_grad():
        old, _ = response_logprobs(model, ids, mask, roll.response_ids, roll.response_mask)
        ref_model = copy.deepcopy(model)
        for p in ref_model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
        ref, _ = response_logprobs(ref_model, ids, mask, roll.response_ids, roll.response_mask)
    adv = torch.randn(16, generator=g)[:, None].expand_as(old).clone()  # (B, R)
    batch = UpdateBatch(ids, mask, roll.response_ids, roll.response_mask, old, adv, ref)
    assert 0 < float((old.exp() < 0.5)[roll.response_mask].float().mean()) < 1
    return model, batch


def _algo(**kw) -> AlgoConfig:
    base = {"minibatch_size": 8, "micro_batch_size": 8, "clip_high": 0.24, "kl_coef": 0.05}
    return AlgoConfig(**(base | kw))


def _recording_optimizer(model, lr=1e-2):
    """AdamW that keeps a copy of the gradients it steps with."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    opt.seen = []
    step = opt.step

    def recording_step(*a, **k):
        opt.seen.append([p.grad.clone() for p in model.parameters()])
        return step(*a, **k)

    opt.step = recording_step
    return opt


def _run(model, batch, algo, lr=1e-2):
    m = copy.deepcopy(model)
    opt = _recording_optimizer(m, lr)
    metrics = update_policy(m, opt, batch, algo, temperature=1.0, max_grad_norm=1.0)
    return m, opt.seen, metrics


def test_without_eta_the_update_is_bit_identical_to_a_plain_grpo_reference(setup):
    model, batch = setup
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    for mb in torch.arange(len(batch)).split(8):
        opt.zero_grad()
        logp, _ = response_logprobs(
            ref,
            batch.prompt_ids[mb],
            batch.prompt_mask[mb],
            batch.response_ids[mb],
            batch.response_mask[mb],
        )
        loss, _ = policy_loss(
            logp,
            batch.old_logprobs[mb],
            batch.advantages[mb],
            batch.response_mask[mb],
            clip_high=0.24,
            clip_c=10.0,
            ref_logprobs=batch.ref_logprobs[mb],
            kl_coef=0.05,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
    for eta in (None, 0.0):
        ours, seen, metrics = _run(model, batch, _algo(eta=eta))
        assert len(seen) == 2 and metrics["actor/optimizer_steps"] == 2
        for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
            assert torch.equal(a, b)


def test_lopti_takes_twice_the_optimizer_steps_low_tokens_first(setup):
    model, batch = setup
    _, seen, metrics = _run(model, batch, _algo(eta=0.5))
    assert len(seen) == 4 and metrics["actor/optimizer_steps"] == 4
    assert 0 < metrics["lopti/low_token_share"] < 1

    # Advantages only on high-probability tokens: pass 1 (low tokens) sees zero gradient
    # everywhere, so the parameters cannot move before pass 2.
    high = batch.old_logprobs.exp() >= 0.5
    only_high = dataclasses.replace(batch, advantages=batch.advantages * high, ref_logprobs=None)
    _, seen, _ = _run(model, only_high, _algo(eta=0.5, kl_coef=0.0))
    assert all(torch.count_nonzero(g) == 0 for step in seen[:2] for g in step)
    assert any(torch.count_nonzero(g) > 0 for g in seen[2])
    # …and the mirror image: advantages only on low tokens leave pass 2 without gradient.
    only_low = dataclasses.replace(only_high, advantages=batch.advantages * ~high)
    _, seen, _ = _run(model, only_low, _algo(eta=0.5, kl_coef=0.0))
    assert any(torch.count_nonzero(g) > 0 for g in seen[0])
    assert all(torch.count_nonzero(g) == 0 for step in seen[2:] for g in step)


def test_lopti_first_step_uses_the_low_tokens_loss_with_the_full_denominator(setup):
    model, batch = setup
    _, seen, _ = _run(
        model, batch, _algo(eta=0.5, kl_coef=0.05, minibatch_size=16, micro_batch_size=16)
    )
    m = copy.deepcopy(model)
    low = batch.response_mask & (batch.old_logprobs.exp() < 0.5)
    logp, _ = response_logprobs(
        m, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
    )
    loss, _ = policy_loss(
        logp,
        batch.old_logprobs,
        batch.advantages * low,
        batch.response_mask,
        clip_high=0.24,
        clip_c=10.0,
        ref_logprobs=batch.ref_logprobs,
        kl_coef=0.05,
        kl_mask=low,
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    for got, want in zip(seen[0], (p.grad for p in m.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


def test_lopti_pass_gradients_add_up_to_the_single_pass_gradient_at_fixed_parameters(setup):
    model, batch = setup
    # lr 0 keeps the parameters fixed, so every step's gradient is taken at the same point.
    kw = {"minibatch_size": 16, "micro_batch_size": 16, "kl_coef": 0.05}
    m = copy.deepcopy(model)
    opt = _recording_optimizer(m, lr=0.0)
    update_policy(m, opt, batch, _algo(eta=0.5, **kw), temperature=1.0)
    opt_base = _recording_optimizer(m, lr=0.0)
    update_policy(m, opt_base, batch, _algo(eta=None, **kw), temperature=1.0)
    for g_low, g_high, g_all in zip(*opt.seen, opt_base.seen[0], strict=True):
        torch.testing.assert_close(g_low + g_high, g_all, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_two_micro_batches_accumulate_to_the_gradient_of_one_batch(setup, agg):
    model, batch = setup
    one = _run(model, batch, _algo(agg=agg, minibatch_size=16, micro_batch_size=16))
    two = _run(model, batch, _algo(agg=agg, minibatch_size=16, micro_batch_size=8))
    for a, b in zip(one[1][0], two[1][0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert one[2]["actor/pg_loss"] == pytest.approx(two[2]["actor/pg_loss"], rel=1e-5, abs=1e-7)


def test_micro_token_mean_steps_with_each_micro_batch_token_mean_over_the_accumulation_steps(setup):
    model, batch = setup
    short = batch.response_mask.clone()
    short[:5, 2:] = False  # shorter responses in the first micro-batch
    batch = dataclasses.replace(batch, response_mask=short)
    counts = [int(batch.response_mask[r].sum()) for r in (slice(0, 8), slice(8, 16))]
    assert counts[0] != counts[1]  # else the two normalisations coincide
    kw = dict(agg="micro-token-mean", kl_log_ratio_clamp=5, minibatch_size=16)
    two = _run(model, batch, _algo(micro_batch_size=8, **kw))
    m = copy.deepcopy(model)
    expected = [torch.zeros_like(p) for p in m.parameters()]
    for rows in (slice(0, 8), slice(8, 16)):
        logp, _ = response_logprobs(
            m, batch.prompt_ids[rows], batch.prompt_mask[rows], batch.response_ids[rows],
            batch.response_mask[rows],
        )  # fmt: skip
        loss, _ = policy_loss(
            logp,
            batch.old_logprobs[rows],
            batch.advantages[rows],
            batch.response_mask[rows],
            clip_high=0.24,
            clip_c=10.0,
            ref_logprobs=batch.ref_logprobs[rows],
            kl_coef=0.05,
            kl_log_ratio_clamp=5,
        )  # fmt: skip  (a micro-batch's own token-mean)
        grads = torch.autograd.grad(loss / 2, list(m.parameters()))
        expected = [e + g for e, g in zip(expected, grads, strict=True)]
    norm = float(torch.stack([e.norm() for e in expected]).norm())
    expected = [e * min(1.0, 1.0 / (norm + 1e-6)) for e in expected]  # _run clips at 1
    for a, b in zip(two[1][0], expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    # one micro-batch per minibatch: the authors' normalisation is the token-mean
    one = _run(model, batch, _algo(micro_batch_size=16, **kw))
    tm = _run(model, batch, _algo(agg="token-mean", kl_log_ratio_clamp=5, minibatch_size=16))
    for a, b in zip(one[1][0], tm[1][0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert any(not torch.allclose(a, b) for a, b in zip(two[1][0], tm[1][0], strict=True))


def test_algo_config_refuses_an_unknown_aggregation_or_kl_clamp_bound():
    with pytest.raises(ValueError, match=r"algo\.agg"):
        AlgoConfig(agg="token-sum")
    with pytest.raises(ValueError, match="kl_log_ratio_clamp must be 5 or 20"):
        AlgoConfig(kl_log_ratio_clamp=10)


def test_minibatch_size_must_divide_the_rollout_batch(setup):
    model, batch = setup
    with pytest.raises(ValueError, match="minibatch_size 6 does not divide"):
        update_policy(
            model,
            torch.optim.AdamW(model.parameters()),
            batch,
            _algo(minibatch_size=6, micro_batch_size=3),
            temperature=1.0,
        )
