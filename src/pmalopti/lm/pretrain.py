"""`pmalopti pretrain`: a small causal LM from scratch (or from `init_from`) under a WSD schedule.

Checkpoints are ordinary Hugging Face folders (weights, config, generation config, tokenizer) plus
`trainer_state.json` and a resumable `training_state.pt` (the format of `pmalopti.runtime.checkpoint`);
the run folder also holds `config.yaml`,
`metrics.jsonl`, the held-out validation text (`data/val.jsonl`) and, at the end, the PMA report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Literal

import torch

from pmalopti.config import SEED, bounded, save_config
from pmalopti.lm.configs import OptimConfig, ScheduleConfig, TrainConfig
from pmalopti.lm.data import (
    BUILTIN,
    batch_indices,
    builtin_texts,
    lm_batch,
    read_texts,
    split_texts,
    tokenize_blocks,
)
from pmalopti.lm.loop import LoopResult, train
from pmalopti.lm.online_pma import OnlinePMAConfig, online_pma_hook
from pmalopti.runtime.checkpoint import list_checkpoints, resume_checkpoint
from pmalopti.runtime.fs import atomic_write_text, prepare_run_dir, removed_on_error
from pmalopti.runtime.threads import torch_threads

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelConfig:
    arch: Literal["llama", "qwen2"] = "llama"
    """transformers architecture of the tiny model"""
    hidden_size: int = bounded(64, ge=1)
    """hidden size"""
    num_layers: int = bounded(2, ge=1)
    """number of transformer layers"""
    num_heads: int = bounded(4, ge=1)
    """attention heads"""
    num_kv_heads: int = bounded(2, ge=1)
    """key/value heads (grouped-query attention)"""
    intermediate_size: int = bounded(0, ge=0)
    """MLP width (0 = 4 x hidden_size)"""
    vocab_size: int = bounded(512, ge=260)
    """BPE vocabulary size of the tokenizer built for the run (ignored with init_from); at least
    256 bytes + specials"""

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size {self.hidden_size} must be divisible by model.num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads {self.num_heads} must be divisible by model.num_kv_heads {self.num_kv_heads}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"model.hidden_size / model.num_heads = {self.hidden_size // self.num_heads} must be even (rotary embeddings)"
            )


@dataclasses.dataclass
class DataConfig:
    builtin: str = "grammar"
    """built-in corpus generated locally: grammar, arithmetic or kk (used when path is empty)"""
    path: str = ""
    """a .txt / .jsonl / .parquet file or a saved `datasets` folder (overrides builtin)"""
    text_field: str = "text"
    """column or JSON field holding the text"""
    num_docs: int = bounded(20000, ge=2)
    """documents generated for a built-in corpus"""
    block_size: int = bounded(128, ge=8)
    """tokens per packed training sequence"""
    val_fraction: float = bounded(0.02, gt=0, lt=1)
    """share of documents held out for validation"""
    max_val_blocks: int = bounded(64, ge=1)
    """cap on validation blocks (keeps periodic evaluation cheap)"""

    def __post_init__(self):
        if not self.path and self.builtin not in BUILTIN:
            raise ValueError(
                f"data.builtin: {self.builtin!r} is not allowed; choose one of {list(BUILTIN)}"
            )


@dataclasses.dataclass
class ReportConfig:
    enabled: bool = True
    """write the PMA report (table, figure, JSON) into RUN/report at the end of the run"""
    n: int = bounded(5, ge=1)
    """checkpoints per merge (the paper's N; it uses 10)"""
    stride: int = bounded(1, ge=1)
    """merge every stride-th checkpoint, i.e. an interval V of stride x train.save_every steps"""
    points: int = bounded(4, ge=1)
    """merge points spread over the stable phase"""
    methods: list[str] = dataclasses.field(
        default_factory=lambda: ["sma", "wma", "ema:0.1", "ema:0.2"]
    )
    """merge methods: sma, wma, ema:<alpha>"""

    def __post_init__(self):
        from pmalopti.pma.spec import MergeSpec

        for m in self.methods:
            try:
                MergeSpec.parse(m)
            except ValueError as exc:
                raise ValueError(
                    f"report.methods: {m!r}: {exc} (use sma, wma or ema:<alpha>)"
                ) from None


@dataclasses.dataclass
class PretrainConfig:
    seed: int = bounded(0, **SEED)
    """seed for model init, data generation and batch order"""
    init_from: str = ""
    """start from this checkpoint's weights and tokenizer with a fresh optimizer (PMA-init)"""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """tiny model shape"""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """training corpus"""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """AdamW"""
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    """warmup-stable-decay LR schedule"""
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """loop, checkpointing and logging"""
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)
    """PMA report at the end"""
    online_pma: OnlinePMAConfig = dataclasses.field(default_factory=OnlinePMAConfig)
    """PMA while training: running merges evaluated as they complete (docs/online-pma.md)"""

    def __post_init__(self):
        if self.schedule.warmup_steps + self.schedule.decay_steps > self.train.steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) + schedule.decay_steps "
                f"({self.schedule.decay_steps}) exceed train.steps ({self.train.steps})"
            )


# --- data and model ----------------------------------------------------------------------------


def corpus(cfg: PretrainConfig) -> tuple[list[str], list[str]]:
    """(train, validation) documents."""
    d = cfg.data
    texts = (
        read_texts(d.path, d.text_field)
        if d.path
        else builtin_texts(d.builtin, d.num_docs, cfg.seed)
    )
    return split_texts(texts, d.val_fraction, cfg.seed)


def build_model_and_tokenizer(cfg: PretrainConfig, train_texts: list[str]):
    from pmalopti.models.tiny import tiny_model_and_tokenizer
    from pmalopti.runtime.hf import load_model, load_tokenizer

    if cfg.init_from:
        return load_model(cfg.init_from), load_tokenizer(cfg.init_from)
    m = cfg.model
    return tiny_model_and_tokenizer(
        train_texts,
        vocab_size=m.vocab_size,
        seed=cfg.seed,
        arch=m.arch,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        intermediate_size=m.intermediate_size or None,
        max_position_embeddings=max(cfg.data.block_size, 128),
    )


def val_blocks_of(run_dir: Path, tokenizer, block_size: int, max_blocks: int) -> torch.Tensor:
    """The run's held-out text (saved at the start) packed like the training data.  (N, T)"""
    texts = read_texts(Path(run_dir) / "data" / "val.jsonl")
    return tokenize_blocks(texts, tokenizer, block_size)[:max_blocks]


def make_batches(blocks: torch.Tensor, cfg: TrainConfig, seed: int):
    """Step -> its micro-batches; a pure function of the step (see data.batch_indices)."""

    def batches(step: int) -> list[dict]:
        idx = batch_indices(step, cfg.batch_size * cfg.grad_accum, blocks.size(0), seed)
        return [
            lm_batch(blocks[idx[i : i + cfg.batch_size]])
            for i in range(0, len(idx), cfg.batch_size)
        ]

    return batches


# --- the command's work ------------------------------------------------------------------------


def pretrain(
    cfg: PretrainConfig, run_dir: str | Path, *, resume: bool = False, force: bool = False, hooks=()
) -> LoopResult:
    """Train (or resume) a run in `run_dir`; write the PMA report at the end when enabled."""
    from pmalopti.runtime.hf import load_model, load_tokenizer

    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume=resume, force=force, inputs=[cfg.init_from, cfg.data.path])
    resume_from = None
    if resume:
        resume_from = resume_checkpoint(run_dir, required=True)
        model, tok = load_model(resume_from), load_tokenizer(resume_from)
        train_texts = read_texts(run_dir / "data" / "train.jsonl")
    else:
        with removed_on_error(run_dir, fresh=True):
            train_texts, val_texts = corpus(cfg)
            model, tok = build_model_and_tokenizer(cfg, train_texts)
            write_jsonl(run_dir / "data" / "train.jsonl", train_texts)
            write_jsonl(run_dir / "data" / "val.jsonl", val_texts)
    with torch_threads(cfg.train.threads):
        result = train_run(
            cfg, run_dir, model, tok, train_texts, resume_from=resume_from, hooks=hooks
        )
        if cfg.report.enabled:
            report(run_dir, cfg)
    return result


def continue_run(
    cfg: PretrainConfig,
    src_run: str | Path,
    out_run: str | Path,
    *,
    init: str | Path,
    step: int,
    tokens: int,
    optimizer_state: dict | None = None,
    force: bool = False,
    hooks=(),
) -> LoopResult:
    """Continue `src_run`'s schedule and batch order from `step` with the weights in `init`.

    Used by `pmalopti recover --resume` (PMA-init after a loss spike): same data, same LR at each
    step, only the starting weights (and optionally the optimizer state) differ.
    """
    import shutil

    from pmalopti.runtime.hf import load_model, load_tokenizer

    src_run, out_run = Path(src_run), Path(out_run)
    prepare_run_dir(out_run, force=force, inputs=[src_run, init])
    for name in ("train.jsonl", "val.jsonl"):
        if not (src_run / "data" / name).is_file():
            raise FileNotFoundError(
                f"{src_run}/data/{name} is missing; was {src_run} made by pmalopti pretrain?"
            )
        (out_run / "data").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_run / "data" / name, out_run / "data" / name)
    model, tok = load_model(init), load_tokenizer(init)
    train_texts = read_texts(out_run / "data" / "train.jsonl")
    return train_run(
        cfg,
        out_run,
        model,
        tok,
        train_texts,
        start_step=step,
        start_tokens=tokens,
        optimizer_state=optimizer_state,
        hooks=hooks,
    )


def train_run(
    cfg: PretrainConfig,
    run_dir: Path,
    model,
    tok,
    train_texts: list[str],
    *,
    resume_from: Path | None = None,
    start_step: int = 0,
    start_tokens: int = 0,
    optimizer_state: dict | None = None,
    hooks=(),
) -> LoopResult:
    save_config(cfg, run_dir / "config.yaml")
    blocks = tokenize_blocks(train_texts, tok, cfg.data.block_size)
    val = val_blocks_of(run_dir, tok, cfg.data.block_size, cfg.data.max_val_blocks)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "pretrain: %s parameters, %d train blocks of %d tokens, %d validation blocks",
        f"{n_params:,}",
        blocks.size(0),
        cfg.data.block_size,
        val.size(0),
    )
    val_batches = [
        lm_batch(val[i : i + cfg.train.batch_size])
        for i in range(0, val.size(0), cfg.train.batch_size)
    ]
    if cfg.online_pma.enabled:
        hooks = (*hooks, online_pma_hook(cfg, run_dir, model, val_batches, resume_from, start_step))
    result = train(
        model,
        tok,
        batches=make_batches(blocks, cfg.train, cfg.seed),
        run_dir=run_dir,
        train_cfg=cfg.train,
        optim_cfg=cfg.optim,
        schedule_cfg=cfg.schedule,
        val_batches=val_batches,
        resume_from=resume_from,
        start_step=start_step,
        start_tokens=start_tokens,
        optimizer_state=optimizer_state,
        hooks=hooks,
    )
    return result


def report(run_dir: str | Path, cfg: PretrainConfig | None = None) -> dict[str, Path]:
    """Evaluate live / merged / annealed checkpoints of a finished run and write RUN/report/."""
    from pmalopti.config import load_config
    from pmalopti.lm.evaluate import evaluate_pma
    from pmalopti.pma.report import write_pma_report
    from pmalopti.runtime.hf import load_tokenizer

    run_dir = Path(run_dir)
    if cfg is None:
        cfg = load_config(PretrainConfig, run_dir / "config.yaml")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"run folder {run_dir} has no checkpoint-* folders")
    tok = load_tokenizer(ckpts[-1][1])
    val = val_blocks_of(run_dir, tok, cfg.data.block_size, cfg.data.max_val_blocks)
    r = cfg.report
    result = evaluate_pma(
        run_dir,
        val_blocks=val,
        total_steps=cfg.train.steps,
        warmup_steps=cfg.schedule.warmup_steps,
        decay_steps=cfg.schedule.decay_steps,
        n=r.n,
        stride=r.stride,
        points=r.points,
        methods=r.methods,
        batch_size=cfg.train.batch_size,
        device=cfg.train.device,
    )
    if not result.points:
        log.warning(
            "report: the stable phase has fewer than report.n=%d checkpoints (stride %d); no merges to show",
            r.n,
            r.stride,
        )
    return write_pma_report(dataclasses.asdict(result), run_dir / "report")


def write_jsonl(path: Path, texts: list[str]) -> None:
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
