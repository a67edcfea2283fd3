"""Building the policy, its tokenizer and the frozen reference model of a GRPO run.

- `model.path` set: any local Hugging Face causal LM folder (or a hub id already cached; runs
  are offline). `model.init_from` replaces its weights (PMA-init from a merged checkpoint).
- `model.path` null: a tiny model with a BPE tokenizer trained on the task's texts, optionally
  warmed up by a few supervised steps on prompt + reference response so that RL starts with a
  non-zero reward. It is saved as `<run>/init/` so the reference and a resumed run reload it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from pmalopti.grpo.config import GRPOConfig
from pmalopti.grpo.rollout import eos_ids, response_logprobs, tokenize_prompts
from pmalopti.models.tiny import load_tokenizer, tiny_model_and_tokenizer

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is cuda but no CUDA device is available")
    return torch.device(name)


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def load_pretrained(path: str, cfg: GRPOConfig, dtype: str) -> PreTrainedModel:
    from pmalopti.pma.reader import CheckpointReader
    from pmalopti.runtime.inputs import check_folder, one_line

    kw = {"dtype": getattr(torch, dtype)}
    if cfg.model.attn_implementation:
        kw["attn_implementation"] = cfg.model.attn_implementation
    if Path(path).is_dir():  # check headers, index paths and symlinks before transformers reads
        check_folder(path)
        CheckpointReader(path).close()
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kw)
    except Exception as exc:  # transformers' errors span lines; one line naming the folder
        raise ValueError(f"{path}: cannot load the model ({one_line(exc)})") from None


def load_policy(
    cfg: GRPOConfig, task, device: torch.device, run_dir: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, init_path): init_path is the folder the reference model loads from."""
    if cfg.model.path is None and cfg.model.init_from is None:
        init = run_dir / "init"
        if not (init / "config.json").is_file():
            model, tok = build_tiny(cfg, task, device)
            model.save_pretrained(init, safe_serialization=True)
            tok.save_pretrained(init)
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
        sft_warmup(model, tok, task, samples, cfg)
    return model, tok


def sft_warmup(model, tok, task, samples: list[dict], cfg: GRPOConfig) -> None:
    """Teacher-forced NLL on `target + eos` after each prompt (response tokens only)."""
    t = cfg.model.tiny
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=t.sft_lr)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    eos = eos_ids(tok, model)[0]
    model.train()
    bar = tqdm(range(t.sft_steps), desc="sft warm-up", disable=not cfg.train.progress, leave=False)
    for _ in bar:
        idx = torch.randint(len(samples), (t.sft_batch_size,), generator=g).tolist()
        batch = [samples[i] for i in idx]
        p_ids, p_mask = tokenize_prompts(
            tok, [task.prompt(s) for s in batch], cfg.rollout.max_prompt_tokens, device
        )
        targets = [
            tok(task.target(s), add_special_tokens=False)["input_ids"] + [eos] for s in batch
        ]
        r = max(len(x) for x in targets)
        r_ids = torch.full((len(batch), r), tok.pad_token_id, dtype=torch.long)
        r_mask = torch.zeros((len(batch), r), dtype=torch.bool)
        for i, x in enumerate(targets):
            r_ids[i, : len(x)] = torch.tensor(x)
            r_mask[i, : len(x)] = True
        r_ids, r_mask = r_ids.to(device), r_mask.to(device)
        logp, _ = response_logprobs(model, p_ids, p_mask, r_ids, r_mask)
        loss = -(logp * r_mask).sum() / r_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(nll=f"{loss.item():.3f}")
    model.eval()


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """An independent frozen copy (a reference for tests and in-memory use)."""
    ref = copy.deepcopy(model)
    return ref.eval().requires_grad_(False)
