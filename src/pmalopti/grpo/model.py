"""Building the policy, its tokenizer and the frozen reference model of a GRPO run.

- `model.path` set: any local Hugging Face causal LM folder (or a hub id already cached; runs
  are offline). `model.init_from` replaces its weights (PMA-init from a merged checkpoint).
- `model.path` null: a tiny model with a BPE tokenizer trained on the task's texts, optionally
  warmed up by a few steps of `pmalopti sft`'s loop on prompt + reference response so that RL
  starts with a non-zero reward. It is saved as `<run>/init/` so the reference and a resumed run
  reload it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pmalopti.grpo.config import GRPOConfig
from pmalopti.models.tiny import tiny_model_and_tokenizer
from pmalopti.runtime.hf import load_model, load_tokenizer, save_pretrained

log = logging.getLogger(__name__)


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def load_pretrained(path: str, cfg: GRPOConfig, dtype: str) -> PreTrainedModel:
    kw = {}
    if cfg.model.attn_implementation:
        kw["attn_implementation"] = cfg.model.attn_implementation
    return load_model(path, "cpu", getattr(torch, dtype), hub_id=True, **kw)


def load_policy(
    cfg: GRPOConfig, task, device: torch.device, run_dir: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, init_path): init_path is the folder the reference model loads from."""
    if cfg.model.path is None and cfg.model.init_from is None:
        init = run_dir / "init"
        if not (init / "config.json").is_file():
            model, tok = build_tiny(cfg, task, device)
            save_pretrained(init, model, tok)
        return (
            load_pretrained(str(init), cfg, cfg.model.param_dtype).to(device),
            load_tokenizer(init),
            str(init),
        )
    init = cfg.model.init_from or cfg.model.path
    tok_src = init if Path(init).is_dir() and _has_tokenizer(Path(init)) else cfg.model.path or init
    if cfg.model.init_from is not None and not Path(cfg.model.init_from).is_dir():
        raise FileNotFoundError(f"--init-from {cfg.model.init_from}: no such folder")
    tok = load_tokenizer(tok_src)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = load_pretrained(init, cfg, cfg.model.param_dtype).to(device)
    return model, tok, init


def load_reference(init_path: str, cfg: GRPOConfig, device: torch.device) -> PreTrainedModel:
    """The frozen reference policy of the KL term (never built when kl_coef == 0)."""
    ref = load_pretrained(init_path, cfg, cfg.model.ref_dtype).to(device)
    ref.eval().requires_grad_(False)
    return ref


def build_tiny(cfg: GRPOConfig, task, device: torch.device):
    """A fresh tiny model and tokenizer for the task, with the optional supervised warm-up."""
    t = cfg.model.tiny
    samples = task.samples("train", n=cfg.task.train_size or 1000, seed=cfg.seed)
    texts = [task.prompt(s) + task.target(s) for s in samples]
    model, tok = tiny_model_and_tokenizer(
        texts,
        vocab_size=t.vocab_size,
        seed=cfg.seed,
        arch=t.arch,
        hidden_size=t.hidden_size,
        num_layers=t.num_layers,
        num_heads=t.num_heads,
        num_kv_heads=t.num_kv_heads,
    )
    model = model.to(device)
    if t.sft_steps:
        _sft_warm_up(model, tok, task, samples, cfg)
    return model, tok


def _sft_warm_up(model, tok, task, samples: list[dict], cfg: GRPOConfig) -> None:
    """`model.tiny.sft_steps` of `pmalopti sft`'s loop (in memory) on prompt -> reference target."""
    from pmalopti.lm.configs import OptimConfig, ScheduleConfig, TrainConfig
    from pmalopti.lm.sft import SFTConfig, SFTDataConfig, encode_rows, fit

    t = cfg.model.tiny
    max_length = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    scfg = SFTConfig(
        seed=cfg.seed,
        data=SFTDataConfig(max_length=max_length, eval_generate=0),
        optim=OptimConfig(lr=t.sft_lr, weight_decay=0.0),
        schedule=ScheduleConfig(warmup_steps=0, decay_steps=0),
        train=TrainConfig(
            steps=t.sft_steps,
            batch_size=t.sft_batch_size,
            eval_every=0,
            device=cfg.model.device,
            threads=cfg.train.threads,
            progress=cfg.train.progress,
        ),
    )
    rows = [{"prompt": task.prompt(s), "target": task.target(s)} for s in samples]
    train_ex = encode_rows(rows, tok, max_length, "warm-up")
    fit(model, tok, train_ex, train_ex[:1], scfg, None)
    model.eval()
