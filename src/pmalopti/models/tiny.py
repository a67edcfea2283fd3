"""Tiny causal LMs and tokenizers built locally (no downloads).

Used by tests, the CPU default configs and the demo. A tiny model is an ordinary `transformers`
Llama or Qwen2 model, so everything downstream (save_pretrained, merging, generate) is the real path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from pmalopti.runtime.hf import load_tokenizer  # noqa: F401  (its home; kept importable here)

EOS = "<|endoftext|>"
PAD = "<|pad|>"

Arch = Literal["llama", "qwen2"]


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    *,
    extra_special: list[str] | None = None,
    split_digits: bool = False,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (every string encodes; nothing is unknown).

    `vocab_size` counts the 256 byte symbols, the merges and the special tokens.
    `split_digits` makes every digit its own token (as Llama/Qwen tokenizers do), which makes
    arithmetic much easier to learn for a tiny model than BPE's uneven digit merges.
    """
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [EOS, PAD, *(extra_special or [])]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        padding_side="left",
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )


def tiny_config(
    vocab_size: int,
    *,
    arch: Arch = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    eos_token_id: int = 0,
    pad_token_id: int = 1,
) -> PretrainedConfig:
    """A small Llama- or Qwen2-style config (a few million parameters at the defaults)."""
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch: {arch!r} is not allowed; choose 'llama' or 'qwen2'")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not divisible by num_kv_heads {num_kv_heads}")
    cls = LlamaConfig if arch == "llama" else Qwen2Config
    return cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
    )


def build_tiny_model(
    config: PretrainedConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A freshly initialised causal LM from `config`, deterministic for a given seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def tiny_model_and_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    seed: int = 0,
    **config_kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Both at once, for tests and examples; `texts` defaults to a few digit/word lines."""
    if texts is None:
        texts = [
            f"{a} + {b} = {a + b}\nthe knight and the knave" for a in range(50) for b in (3, 17)
        ]
    tok = build_tokenizer(texts, vocab_size=vocab_size)
    cfg = tiny_config(
        len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **config_kwargs
    )
    return build_tiny_model(cfg, seed=seed), tok
