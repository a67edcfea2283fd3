"""Where the gradient comes from: token share and gradient-norm share per π_old bucket.

The paper's Fig. 1 (arXiv 2505.12929 §3) shows that tokens with π_old < 0.25, a minority, carry
most of the gradient norm, because d(−Â·logπ(y))/d logits = −Â·(e_y − p) has norm between
(1 − π_y) and √2·(1 − π_y). Two ways to measure it:

- default, free: the exact gradient norm at the logits. Each token position owns its logits,
  so per-token logit gradients are orthogonal and a bucket's norm is √(Σ_t g_t²) with
  g_t = |Â_t|/T·‖e_y − p_t‖/denom (`logit_grad_norms`). Without logits the paper's bound
  |Â|·(1 − π) stands in for ‖e_y − p‖.
- exact, one backward per bucket: `exact_bucket_grad_norms` differentiates the loss restricted
  to each bucket's tokens w.r.t. the model parameters, as the paper's figure does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from pmalopti.rl._checks import as_bool_mask, check_2d, check_same_shape, per_token

BUCKET_EDGES: tuple[float, ...] = (0.25, 0.5, 0.75)
BUCKET_LABELS: tuple[str, ...] = ("p<0.25", "0.25<=p<0.5", "0.5<=p<0.75", "p>=0.75")


def bucket_index(old_logprobs: Tensor) -> Tensor:
    """(B, T) → (B, T) long in 0..3: the π_old bucket of each token (edges 0.25, 0.5, 0.75)."""
    edges = torch.tensor(BUCKET_EDGES, dtype=torch.float32, device=old_logprobs.device)
    return torch.bucketize(old_logprobs.detach().float().exp(), edges, right=True)


def logit_grad_norms(
    logits: Tensor,
    tokens: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    denom: float = 1.0,
) -> Tensor:
    """Per-token ‖∂loss/∂logits‖ of the on-policy surrogate (ratio = 1), no backward needed.

    logits: (B, T, V) raw logits at the response positions; tokens: (B, T) sampled ids;
    advantages: (B,) or (B, T); mask: (B, T). Returns (B, T), zero outside the mask:
    |Â|/temperature·‖e_y − softmax(logits/temperature)‖₂/denom, using
    ‖e_y − p‖² = 1 − 2·p_y + Σ_j p_j². With `denom` the token-mean denominator this equals
    autograd's gradient of `policy_loss` w.r.t. the logits when logprobs == old_logprobs.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V); got shape {tuple(logits.shape)}")
    check_2d("tokens", tokens)
    if tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)} but logits has shape {tuple(logits.shape)}; "
            "tokens must be logits.shape[:2]"
        )
    check_same_shape("tokens", tokens, mask=mask)
    adv = per_token("advantages", advantages, tokens, "tokens")  # (B, T)
    with torch.no_grad():
        p = torch.softmax(logits.detach().float() / temperature, dim=-1)  # (B, T, V)
        p_y = p.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
        sq = (1 - 2 * p_y + p.square().sum(-1)).clamp_min(0)  # (B, T)
        g = adv.detach().float().abs() * sq.sqrt() / (temperature * float(denom))  # (B, T)
        return torch.where(as_bool_mask("mask", mask), g, torch.zeros_like(g))


def exact_bucket_grad_norms(
    loss_fn: Callable[[Tensor], Tensor],
    params: Iterable[Tensor],
    old_logprobs: Tensor,
    mask: Tensor,
) -> Tensor:
    """Gradient norm w.r.t. `params` of the loss restricted to each π_old bucket: (4,) float.

    `loss_fn(bucket_mask)` gets a (B, T) bool mask and must return the scalar loss with only
    those tokens contributing (e.g. `policy_loss(lp, old, adv * bucket_mask, mask, denom=N)[0]`,
    keeping the full denominator). It may reuse one forward graph: gradients are taken with
    retain_graph=True. Costs one backward per non-empty bucket; `.grad` fields are untouched.
    """
    check_2d("old_logprobs", old_logprobs)
    check_same_shape("old_logprobs", old_logprobs, mask=mask)
    params = [p for p in params if p.requires_grad]
    m = as_bool_mask("mask", mask)  # (B, T)
    buckets = bucket_index(old_logprobs)  # (B, T)
    norms = torch.zeros(len(BUCKET_LABELS), dtype=torch.float64)
    for b in range(len(BUCKET_LABELS)):
        bm = m & (buckets == b)  # (B, T)
        if not bm.any():
            continue
        grads = torch.autograd.grad(loss_fn(bm), params, retain_graph=True, allow_unused=True)
        sq = [g.detach().double().square().sum() for g in grads if g is not None]
        norms[b] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
    return norms


def token_prob_diagnostics(
    old_logprobs: Tensor,
    mask: Tensor,
    advantages: Tensor | None = None,
    *,
    logits: Tensor | None = None,
    tokens: Tensor | None = None,
    temperature: float = 1.0,
    bucket_grad_norms: Tensor | None = None,
) -> dict[str, float]:
    """Share of response tokens and of gradient norm per π_old bucket (the paper's Fig. 1).

    old_logprobs, mask: (B, T); advantages: (B,) or (B, T). Gradient-norm shares come from, in
    order of preference: `bucket_grad_norms` (4,) from `exact_bucket_grad_norms`; the exact
    logit-gradient norms when `logits` (B, T, V) and `tokens` (B, T) are given; the paper's
    |Â|·(1 − π_old) bound otherwise. Without advantages only token shares are returned.
    Keys: "diag/token_share/<bucket>", "diag/grad_share/<bucket>", buckets as BUCKET_LABELS.
    A bucket's norm is √(Σ per-token norm²) (per-token logit gradients are orthogonal) and its
    share is norm_b / Σ_b norm_b, so the shares sum to 1 like the paper's bars.
    """
    check_2d("old_logprobs", old_logprobs)
    check_same_shape("old_logprobs", old_logprobs, mask=mask)
    m = as_bool_mask("mask", mask)  # (B, T)
    buckets = bucket_index(old_logprobs)  # (B, T)
    n = int(m.sum())
    out: dict[str, float] = {}
    for b, label in enumerate(BUCKET_LABELS):
        out[f"diag/token_share/{label}"] = int((m & (buckets == b)).sum()) / n if n else 0.0

    if bucket_grad_norms is not None:
        if bucket_grad_norms.shape != (len(BUCKET_LABELS),):
            raise ValueError(
                f"bucket_grad_norms must have shape ({len(BUCKET_LABELS)},); "
                f"got {tuple(bucket_grad_norms.shape)}"
            )
        norms = bucket_grad_norms.double().cpu()
    elif advantages is not None:
        if logits is not None and tokens is not None:
            g = logit_grad_norms(logits, tokens, advantages, m, temperature=temperature)
        else:
            adv = per_token("advantages", advantages, old_logprobs, "old_logprobs")  # (B, T)
            g = adv.detach().float().abs() * (1 - old_logprobs.detach().float().exp())  # (B, T)
            g = torch.where(m, g, torch.zeros_like(g))
        g2 = g.double().square()  # (B, T)
        norms = torch.stack(
            [g2[buckets == b].sum().sqrt() for b in range(len(BUCKET_LABELS))]
        ).cpu()
    else:
        return out
    total = float(norms.sum())
    for b, label in enumerate(BUCKET_LABELS):
        out[f"diag/grad_share/{label}"] = float(norms[b]) / total if total > 0 else 0.0
    return out
