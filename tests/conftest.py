"""Shared fixtures: tiny models and tokenizers built locally, no network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_lm():
    """(model, tokenizer): a ~1M-parameter Llama-style model with a local byte-level BPE."""
    from pmalopti.models.tiny import tiny_model_and_tokenizer

    return tiny_model_and_tokenizer(seed=0)
