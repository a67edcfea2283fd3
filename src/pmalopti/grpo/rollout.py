"""Rollouts for the GRPO trainer: sampling with a KV cache and per-token log-probabilities.

Sequences are laid out as `[prompt, left-padded | response, right-padded]`, so the response of
every row starts at the same column and per-token tensors are `(B, R)`. Position ids follow the
attention mask (left padding does not shift positions), in sampling and in scoring alike, so the
log-probs of the scoring pass are those of the policy that sampled.

Two samplers give the same distribution: `sample_loop` (our loop over a `DynamicCache`, with a
dedicated `torch.Generator` so a resumed run re-samples exactly) and `sample_hf`
(`model.generate` with top-k and top-p switched off). On the tiny CPU models the loop is faster
(see docs/readme/51-grpo-trainer.md); `rollout.engine` picks one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)


@dataclasses.dataclass
class Rollout:
    """Sampled completions of a batch of prompts (B rows)."""

    prompt_ids: Tensor  # (B, L) left-padded
    prompt_mask: Tensor  # (B, L) long, 1 on prompt tokens
    response_ids: Tensor  # (B, R) right-padded with pad
    response_mask: Tensor  # (B, R) bool, True up to and including eos / the stop token
    texts: list[str]  # the decoded responses (special tokens skipped)
    truncated: Tensor  # (B,) bool, hit max_new_tokens without eos or a stop string

    @property
    def lengths(self) -> Tensor:  # (B,)
        return self.response_mask.sum(-1)


def positions(mask: Tensor) -> Tensor:
    """Position ids that skip left padding: (B, L) -> (B, L)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_tokens: int, device
) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask, (B, L) each; an over-long prompt is an error."""
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    longest = max(len(e) for e in enc)
    if longest > max_tokens:
        i = max(range(len(enc)), key=lambda j: len(enc[j]))
        raise ValueError(
            f"prompt {i} has {longest} tokens, more than rollout.max_prompt_tokens={max_tokens}: "
            f"{prompts[i][:80]!r}..."
        )
    if min(len(e) for e in enc) == 0:
        raise ValueError("an empty prompt cannot be continued; check the task's prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids(tokenizer)[0]
    ids = torch.full((len(enc), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), longest), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, longest - len(e) :] = torch.tensor(e)
        mask[i, longest - len(e) :] = 1
    return ids.to(device), mask.to(device)


def eos_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> list[int]:
    """Every token that ends a response: the tokenizer's eos plus the generation config's."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None) if model is not None else None
    for src in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        for i in src if isinstance(src, list | tuple) else [src]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer has no eos token; set one so responses can end")
    return ids


class StopStrings:
    """Detects the token that completes a stop string, from a short decoded tail of the row."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = list(stops)
        # A token decodes to at least one character, so this many tokens cover any stop string.
        self.window = max((len(s) for s in self.stops), default=0) + 1

    def __bool__(self) -> bool:
        return bool(self.stops)

    def hits(self, tokens: Tensor, t: int, rows: Tensor) -> Tensor:
        """Which of `rows` (indices) complete a stop string with token `t`: (len(rows),) bool."""
        lo = max(0, t + 1 - self.window)
        tails = self.tokenizer.batch_decode(tokens[rows, lo : t + 1].tolist())
        # Without the last token the window must not already hold the stop string (else it
        # ended earlier); comparing both tails keeps multi-token stop strings exact.
        prev = self.tokenizer.batch_decode(tokens[rows, lo:t].tolist())
        return torch.tensor(
            [
                any(s in x and s not in p for s in self.stops)
                for x, p in zip(tails, prev, strict=True)
            ],
            dtype=torch.bool,
        )


def _finish(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    tokens: Tensor,
    lengths: Tensor,
    truncated: Tensor,
    pad: int,
) -> Rollout:
    """Cut each row at its length, pad the rest, decode."""
    r = int(lengths.max()) if lengths.numel() else 0
    tokens = tokens[:, : max(r, 1)]
    mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]  # (B, R)
    tokens = torch.where(mask, tokens, torch.full_like(tokens, pad))
    texts = tokenizer.batch_decode(
        [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)],
        skip_special_tokens=True,
    )
    return Rollout(prompt_ids, prompt_mask, tokens, mask, texts, truncated)


@torch.no_grad()
def sample_loop(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    stop: Sequence[str] = (),
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample (or greedily decode) up to `max_new_tokens` per row with a KV cache.

    Each token is drawn from softmax(logits / T) in float32 (no top-k/top-p), the distribution
    whose log-probs the trainer uses as π_old. Rows that ended are dropped from the batch and
    the KV cache once they are a quarter of it, so long-tailed response lengths do not keep
    paying for finished rows.
    """
    b = prompt_ids.shape[0]
    device = prompt_ids.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids(tokenizer)[0]
    eos = torch.tensor(eos_ids(tokenizer, model), device=device)
    stops = StopStrings(tokenizer, stop)
    attn = prompt_mask.long()  # (A, L + t), A = rows still in the batch
    pos = positions(attn)[:, -1:]  # (A, 1)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=prompt_ids,
        attention_mask=attn,
        position_ids=positions(attn),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    tokens = torch.full((b, max_new_tokens), pad, dtype=torch.long, device=device)  # (B, N)
    lengths = torch.full((b,), max_new_tokens, dtype=torch.long, device=device)  # (B,)
    finished = torch.zeros(b, dtype=torch.bool, device=device)  # (B,)
    rows = torch.arange(b, device=device)  # (A,) batch row of each row still sampled
    dead = torch.zeros(b, dtype=torch.bool, device=device)  # (A,) ended, not yet dropped
    for t in range(max_new_tokens):
        logits = out.logits[:, -1].float()  # (A, V)
        if greedy:
            tok = logits.argmax(-1)  # (A,)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)  # (A, V)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (A,)
        tok = torch.where(dead, torch.full_like(tok, pad), tok)
        tokens[rows, t] = tok
        ended = torch.isin(tok, eos) & ~dead  # (A,)
        if stops:
            live = (~dead & ~ended).nonzero().squeeze(-1)
            if live.numel():
                ended[live] |= stops.hits(tokens, t, rows[live]).to(device)
        lengths[rows[ended]] = t + 1
        finished[rows[ended]] = True
        dead |= ended
        if bool(dead.all()) or t == max_new_tokens - 1:
            break
        if int(dead.sum()) >= max(1, dead.numel() // 4):
            keep = (~dead).nonzero().squeeze(-1)  # (A',)
            cache.batch_select_indices(keep)
            attn, pos, tok, rows, dead = attn[keep], pos[keep], tok[keep], rows[keep], dead[keep]
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
        pos = pos + 1
        out = model(
            input_ids=tok[:, None],
            attention_mask=attn,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
        )
    return _finish(tokenizer, prompt_ids, prompt_mask, tokens, lengths, ~finished, pad)


class _HFStop(StoppingCriteria):
    """Our stop-string rule inside `generate` (its own `stop_strings` also match across the
    prompt/response boundary, which would end a response before it starts)."""

    def __init__(self, stops: StopStrings, prompt_len: int):
        self.stops, self.prompt_len = stops, prompt_len

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        resp = input_ids[:, self.prompt_len :]  # (B, t + 1)
        rows = torch.arange(resp.shape[0], device=resp.device)
        return self.stops.hits(resp, resp.shape[1] - 1, rows).to(resp.device)


@torch.no_grad()
def sample_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    stop: Sequence[str] = (),
    generator: torch.Generator | None = None,
) -> Rollout:
    """The same as `sample_loop` through `model.generate` (draws from the global torch RNG)."""
    del generator  # generate() has no generator argument
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids(tokenizer)[0]
    eos = eos_ids(tokenizer, model)
    stops = StopStrings(tokenizer, stop)
    kw = (
        {"do_sample": False}
        if greedy
        else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    )
    # A checkpoint's generation_config (Qwen2.5-Instruct: top_k 20, top_p 0.8, repetition
    # penalty 1.05) would silently change the sampling distribution away from π_old; generate()
    # fills unset options from it, so it is swapped for a neutral one during the call.
    saved = model.generation_config
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    try:
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            stopping_criteria=StoppingCriteriaList(
                [_HFStop(stops, prompt_ids.shape[1])] if stop else []
            ),
            **kw,
        )
    finally:
        model.generation_config = saved
    tokens = out[:, prompt_ids.shape[1] :]  # (B, N')
    b, n = tokens.shape
    lengths = torch.full((b,), n, dtype=torch.long, device=tokens.device)
    done = torch.zeros(b, dtype=torch.bool, device=tokens.device)
    eos_t = torch.tensor(eos, device=tokens.device)
    for t in range(n):
        ended = torch.isin(tokens[:, t], eos_t) & ~done
        if stops:
            rows = (~done & ~ended).nonzero().squeeze(-1)
            if rows.numel():
                ended[rows] |= stops.hits(tokens, t, rows).to(tokens.device)
        lengths = torch.where(ended, torch.full_like(lengths, t + 1), lengths)
        done |= ended
    return _finish(tokenizer, prompt_ids, prompt_mask, tokens, lengths, ~done, pad)


def response_logprobs(
    model: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log π(o_t | prompt, o_<t) at temperature T for every response column: (B, R).

    Differentiable when called with grad enabled. Only the response positions go through the
    LM head (`logits_to_keep`), so prompts cost no vocabulary-sized activations. Columns that
    are padding in every row (left of the longest prompt, right of the longest response of
    *these* rows) are cut before the forward pass and come back as zeros, so a micro-batch of
    short responses does not pay for the longest response of the rollout batch. With
    `with_entropy`, also the per-token entropy of softmax(logits / T), without gradient.
    """
    r_full = response_ids.shape[1]
    used = response_mask.bool().any(0).nonzero()  # response columns some row uses
    r = int(used.max()) + 1 if used.numel() else 1
    first = int(prompt_mask.long().argmax(-1).min())  # first column any row's prompt uses
    prompt_ids, prompt_mask = prompt_ids[:, first:], prompt_mask[:, first:]
    response_ids, response_mask = response_ids[:, :r], response_mask[:, :r]
    ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, L' + r)
    attn = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)  # (B, L' + r)
    out = model(
        input_ids=ids,
        attention_mask=attn,
        position_ids=positions(attn),
        use_cache=False,
        logits_to_keep=r + 1,
    )
    logits = out.logits[:, :-1].float() / temperature  # (B, r, V)
    lse = torch.logsumexp(logits, dim=-1)  # (B, r)
    logp = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1) - lse  # (B, r)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            p = torch.softmax(logits.detach(), dim=-1)  # (B, r, V)
            entropy = lse.detach() - (p * logits.detach()).sum(-1)  # (B, r)
            entropy = torch.nn.functional.pad(entropy, (0, r_full - r))  # (B, R)
    return torch.nn.functional.pad(logp, (0, r_full - r)), entropy  # (B, R)
