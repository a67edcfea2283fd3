"""Token-probability diagnostics (the paper's Fig. 1): token shares, gradient-norm shares."""

from __future__ import annotations

import pytest
import torch

from pmalopti.rl import (
    BUCKET_LABELS,
    bucket_index,
    exact_bucket_grad_norms,
    logit_grad_norms,
    policy_loss,
    token_prob_diagnostics,
)

B, T, V, TEMP = 5, 8, 13, 0.7


def _on_policy_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 2).requires_grad_()  # (B, T, V)
    tokens = torch.randint(0, V, (B, T), generator=g)  # (B, T)
    adv = torch.randn(B, generator=g)  # (B,)
    mask = torch.rand(B, T, generator=g) > 0.2  # (B, T)
    mask[:, 0] = True

    def logprobs():
        return torch.log_softmax(logits / TEMP, -1).gather(-1, tokens[..., None]).squeeze(-1)

    return logits, tokens, adv, mask, logprobs


def test_logit_gradient_proxy_equals_autograds_per_token_logit_gradient_norm():
    logits, tokens, adv, mask, logprobs = _on_policy_case()
    lp = logprobs()
    loss, _ = policy_loss(lp, lp.detach(), adv, mask, ref_logprobs=None)
    (grad,) = torch.autograd.grad(loss, logits)  # (B, T, V)
    proxy = logit_grad_norms(logits, tokens, adv, mask, temperature=TEMP, denom=int(mask.sum()))
    torch.testing.assert_close(proxy, grad.norm(dim=-1), rtol=1e-5, atol=1e-8)


def test_logit_gradient_norm_lies_between_the_papers_one_minus_pi_bounds():
    logits, tokens, adv, mask, logprobs = _on_policy_case(1)
    pi = logprobs().detach().exp()
    g = logit_grad_norms(logits, tokens, adv, mask, temperature=TEMP) * TEMP  # undo the 1/T
    bound = adv.abs()[:, None] * (1 - pi)
    assert (g[mask] >= bound[mask] * (1 - 1e-5)).all()
    assert (g[mask] <= bound[mask] * 2**0.5 * (1 + 1e-5)).all()


def test_exact_per_bucket_backward_at_the_logits_equals_the_proxy_shares():
    logits, tokens, adv, mask, logprobs = _on_policy_case(2)
    lp = logprobs()
    old = lp.detach()
    n = int(mask.sum())

    def bucket_loss(bucket_mask):
        return policy_loss(lp, old, adv[:, None] * bucket_mask, mask, denom=n)[0]

    exact = exact_bucket_grad_norms(bucket_loss, [logits], old, mask)
    assert (exact > 0).sum() >= 3
    via_exact = token_prob_diagnostics(old, mask, adv, bucket_grad_norms=exact)
    via_proxy = token_prob_diagnostics(
        old, mask, adv, logits=logits, tokens=tokens, temperature=TEMP
    )
    assert via_exact.keys() == via_proxy.keys()
    for key, value in via_exact.items():
        assert via_proxy[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_exact_bucket_norm_is_the_norm_of_that_buckets_own_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, V)
    x = torch.randn(B, T, 4)
    _, tokens, adv, mask, _ = _on_policy_case(3)
    lp = torch.log_softmax(lin(x), -1).gather(-1, tokens[..., None]).squeeze(-1)
    old = lp.detach()

    def bucket_loss(bm):
        return policy_loss(lp, old, adv[:, None] * bm, mask)[0]

    norms = exact_bucket_grad_norms(bucket_loss, lin.parameters(), old, mask)
    buckets = bucket_index(old)
    for b in range(len(BUCKET_LABELS)):
        bm = mask & (buckets == b)
        if bm.any():
            grads = torch.autograd.grad(bucket_loss(bm), list(lin.parameters()), retain_graph=True)
            expected = torch.cat([g.flatten() for g in grads]).norm()
            assert float(norms[b]) == pytest.approx(float(expected), rel=1e-5)
        else:
            assert norms[b] == 0


def test_token_shares_count_response_tokens_per_probability_bucket():
    probs = torch.tensor([[0.1, 0.3, 0.6, 0.9], [0.2, 0.25, 0.75, 0.5]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out = token_prob_diagnostics(probs.log(), mask)
    assert out == {
        "diag/token_share/p<0.25": 2 / 7,
        "diag/token_share/0.25<=p<0.5": 2 / 7,
        "diag/token_share/0.5<=p<0.75": 1 / 7,
        "diag/token_share/p>=0.75": 2 / 7,
    }


def test_one_minus_pi_fallback_gives_grad_shares_summing_to_one_dominated_by_low_tokens():
    probs = torch.tensor([[0.05, 0.1, 0.95, 0.97, 0.99, 0.9]])
    out = token_prob_diagnostics(probs.log(), torch.ones(1, 6, dtype=torch.bool), torch.ones(1))
    shares = [out[f"diag/grad_share/{k}"] for k in BUCKET_LABELS]
    assert sum(shares) == pytest.approx(1.0)
    assert out["diag/grad_share/p<0.25"] > 0.8 > out["diag/token_share/p<0.25"]
