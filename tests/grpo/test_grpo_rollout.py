"""Rollouts: our KV-cache sampler against transformers.generate, stop strings, padded scoring."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pmalopti.grpo.rollout import (
    StopStrings,
    response_logprobs,
    sample_hf,
    sample_loop,
    tokenize_prompts,
)
from pmalopti.models.tiny import tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def lm():
    model, tok = tiny_model_and_tokenizer(seed=1, hidden_size=32, num_layers=2, num_heads=4)
    with torch.no_grad():
        model.model.norm.weight.mul_(10.0)
    return model.eval(), tok


PROMPTS = ["1 + 3 =", "12 + 17 = 29\nthe", "knight", "40 + 3 = 43\n7 + 17 ="]


def test_greedy_loop_decodes_the_same_tokens_as_transformers_generate(lm):
    model, tok = lm
    ids, mask = tokenize_prompts(tok, PROMPTS, 64, "cpu")
    ours = sample_loop(model, tok, ids, mask, max_new_tokens=10, greedy=True)
    theirs = sample_hf(model, tok, ids, mask, max_new_tokens=10, greedy=True)
    assert torch.equal(ours.response_ids, theirs.response_ids)
    assert torch.equal(ours.response_mask, theirs.response_mask)
    assert ours.texts == theirs.texts


def test_padding_and_trimming_do_not_change_a_rows_log_probs(lm):
    model, tok = lm
    ids, mask = tokenize_prompts(tok, PROMPTS, 64, "cpu")
    g = torch.Generator().manual_seed(0)
    roll = sample_loop(model, tok, ids, mask, max_new_tokens=8, temperature=0.7, generator=g)
    with torch.no_grad():
        batched, _ = response_logprobs(
            model, ids, mask, roll.response_ids, roll.response_mask, temperature=0.7
        )
        assert (batched[~roll.response_mask] == 0).all()
        for i in range(len(PROMPTS)):  # each row alone: no left padding, its own length
            keep = mask[i].bool()
            n = int(roll.response_mask[i].sum())
            alone, _ = response_logprobs(
                model,
                ids[i : i + 1, keep],
                mask[i : i + 1, keep],
                roll.response_ids[i : i + 1, :n],
                roll.response_mask[i : i + 1, :n],
                temperature=0.7,
            )
            torch.testing.assert_close(batched[i, :n], alone[0], rtol=1e-4, atol=1e-5)


def test_sampled_tokens_follow_the_tempered_distribution_of_the_scoring_pass(lm):
    model, tok = lm
    ids, mask = tokenize_prompts(tok, ["1 + 3 ="] * 2000, 64, "cpu")
    g = torch.Generator().manual_seed(0)
    roll = sample_loop(model, tok, ids, mask, max_new_tokens=1, temperature=1.5, generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids[:1], attention_mask=mask[:1]).logits[0, -1]
    p = torch.softmax(logits / 1.5, -1)  # (V,)
    top = p.topk(3).indices
    freq = torch.stack([(roll.response_ids[:, 0] == t).float().mean() for t in top])
    # 2000 draws: the binomial standard error is at most 0.011, so 0.04 is > 3.5 SE.
    torch.testing.assert_close(freq, p[top], atol=0.04, rtol=0)


def test_a_response_ends_with_the_token_that_completes_a_stop_string(lm):
    model, tok = lm
    ids, mask = tokenize_prompts(tok, PROMPTS, 64, "cpu")
    free = sample_loop(model, tok, ids, mask, max_new_tokens=12, greedy=True)
    text = free.texts[0]
    stop = text[3:6] if len(text) >= 6 else text[-2:]
    cut = sample_loop(model, tok, ids, mask, max_new_tokens=12, greedy=True, stop=[stop])
    n = int(cut.lengths[0])
    assert stop in cut.texts[0] and stop not in tok.decode(cut.response_ids[0, : n - 1])
    assert torch.equal(cut.response_ids[0, :n], free.response_ids[0, :n])
    assert not cut.response_mask[0, n:].any() and not cut.truncated[0]
    hf = sample_hf(model, tok, ids, mask, max_new_tokens=12, greedy=True, stop=[stop])
    assert torch.equal(hf.lengths, cut.lengths)


def test_stop_strings_spanning_several_tokens_are_found_once(lm):
    _, tok = lm
    text = "the knight and the knave"
    toks = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    stops = StopStrings(tok, ["and the"])
    hit = [bool(stops.hits(toks, t, torch.tensor([0]))[0]) for t in range(toks.shape[1])]
    assert sum(hit) == 1
    first = hit.index(True)
    assert "and the" in tok.decode(toks[0, : first + 1]) and "and the" not in tok.decode(
        toks[0, :first]
    )


@contextlib.contextmanager
def eos_first_in_rows(model, eos: int, rows: list[int]):
    """Make eos the overwhelming choice of `rows` on the prompt pass only (the first call)."""
    calls = []

    def hook(module, inputs, logits):
        calls.append(1)
        if len(calls) > 1:
            return logits
        logits = logits.clone()
        logits[rows, :, eos] += 1e3
        return logits

    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def test_eos_ends_a_response_is_kept_in_its_mask_and_the_rest_is_padding(lm):
    model, tok = lm
    ids, mask = tokenize_prompts(tok, PROMPTS, 64, "cpu")
    eos = tok.eos_token_id
    with eos_first_in_rows(model, eos, [0, 2]):
        roll = sample_loop(model, tok, ids, mask, max_new_tokens=5, temperature=1.0)
    assert roll.lengths[[0, 2]].tolist() == [1, 1]
    assert roll.response_ids[0, 0] == eos and roll.texts[0] == ""
    assert roll.response_mask[0].tolist() == [True] + [False] * 4
    assert (roll.response_ids[0, 1:] == tok.pad_token_id).all()
    assert not roll.truncated[0] and not roll.truncated[2]
    for i in (1, 3):  # rows without a large eos logit: eos is rare, most run to the limit
        n = int(roll.lengths[i])
        assert roll.truncated[i] == (eos not in roll.response_ids[i, :n].tolist())


def test_over_long_prompts_are_refused_with_their_length(lm):
    _, tok = lm
    with pytest.raises(ValueError, match=r"more than rollout\.max_prompt_tokens=2"):
        tokenize_prompts(tok, ["1 + 3 = 4 and more"], 2, "cpu")


def test_dropping_finished_rows_keeps_the_other_rows_greedy_tokens(lm):
    model, tok = lm
    ids, mask = tokenize_prompts(tok, PROMPTS, 64, "cpu")
    with eos_first_in_rows(model, tok.eos_token_id, [0, 2]):
        ours = sample_loop(model, tok, ids, mask, max_new_tokens=8, greedy=True)
    with eos_first_in_rows(model, tok.eos_token_id, [0, 2]):
        theirs = sample_hf(model, tok, ids, mask, max_new_tokens=8, greedy=True)
    assert ours.lengths[[0, 2]].tolist() == [1, 1]
    assert torch.equal(ours.response_ids, theirs.response_ids)
    assert torch.equal(ours.response_mask, theirs.response_mask)


def test_generate_ignores_the_checkpoints_sampling_defaults(lm):
    model, tok = lm
    ids, mask = tokenize_prompts(tok, PROMPTS, 64, "cpu")
    want = sample_loop(model, tok, ids, mask, max_new_tokens=8, greedy=True)
    saved = model.generation_config.to_dict()
    # What Qwen2.5-Instruct ships (plus an extreme penalty), which would bias π_old.
    model.generation_config.update(
        top_k=20, top_p=0.8, repetition_penalty=5.0, no_repeat_ngram_size=1
    )
    try:
        got = sample_hf(model, tok, ids, mask, max_new_tokens=8, greedy=True)
    finally:
        model.generation_config.update(**saved)
    assert model.generation_config.repetition_penalty == saved.get("repetition_penalty", 1.0)
    assert torch.equal(got.response_ids, want.response_ids)


def test_sampling_runs_on_the_cache_api_without_deprecation_or_future_warnings(lm, monkeypatch):
    """Every sampler and the scoring pass, with warnings as errors, plus transformers' own
    deprecation log lines (`logger.warning_once`); the row-dropping path trims the cache."""
    import logging
    import warnings

    from transformers import DynamicCache
    from transformers.utils import logging as hf_logging

    model, tok = lm
    ids, mask = tokenize_prompts(tok, PROMPTS, 64, "cpu")
    trims = []
    select = DynamicCache.batch_select_indices
    monkeypatch.setattr(
        DynamicCache, "batch_select_indices", lambda self, i: trims.append(i) or select(self, i)
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = hf_logging.get_logger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            g = torch.Generator().manual_seed(0)
            with eos_first_in_rows(model, tok.eos_token_id, [0, 2]):
                roll = sample_loop(
                    model, tok, ids, mask, max_new_tokens=6, temperature=0.7, generator=g
                )
            sample_hf(model, tok, ids, mask, max_new_tokens=6, temperature=0.7)
            with torch.no_grad():
                response_logprobs(
                    model, ids, mask, roll.response_ids, roll.response_mask, temperature=0.7
                )
    finally:
        hf_logger.removeHandler(handler)
    assert trims, "finished rows were dropped from the KV cache"
    assert not [r for r in records if "deprecat" in r.getMessage().lower()]
