"""Configuration of the built-in GRPO trainer (`pmalopti grpo`), one dataclass per concern.

Every field has a docstring; choices are `Literal`s and ranges are declared on the fields
(`bounded`), checked when the config is loaded; `__post_init__` checks relations between fields. The defaults are a tiny CPU run; `configs/grpo_kk_qwen2.5-3b.yaml`
holds the paper's K&K settings (arXiv 2505.12929 §5.1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Literal

from pmalopti.config import SEED, THREADS, bounded
from pmalopti.rl.loss import AGG_MODES, Agg
from pmalopti.runtime.device import Device, Precision, canonical_precision
from pmalopti.runtime.runlog import ReportTo


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclasses.dataclass
class TinyModelConfig:
    """A fresh tiny model (when `model.path` is null) for CPU experiments and tests."""

    arch: Literal["llama", "qwen2"] = "llama"
    """model family of the tiny model"""
    hidden_size: int = bounded(64, ge=1)
    """hidden size"""
    num_layers: int = bounded(2, ge=1)
    """number of transformer blocks"""
    num_heads: int = bounded(4, ge=1)
    """attention heads"""
    num_kv_heads: int = bounded(2, ge=1)
    """key/value heads (grouped-query attention)"""
    vocab_size: int = bounded(384, ge=300)
    """BPE vocabulary size of the tokenizer trained on the task's texts (256 bytes + merges)"""
    sft_steps: int = bounded(0, ge=0)
    """supervised warm-up steps on prompt + reference response, so RL starts with some reward"""
    sft_lr: float = bounded(3e-3, gt=0)
    """learning rate of the supervised warm-up"""
    sft_batch_size: int = bounded(32, ge=1)
    """batch size of the supervised warm-up"""


@dataclasses.dataclass
class ModelConfig:
    path: str | None = None
    """Hugging Face causal LM folder or hub id already in the local cache; null builds a tiny model"""
    init_from: str | None = None
    """load the policy's weights from this folder instead (PMA-init: a merged checkpoint)"""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the trained weights (float32 keeps lr 1e-6 updates from rounding away)"""
    autocast: Precision = "float32"
    """compute precision of forward passes: auto (bf16 autocast on CUDA), float32 or bfloat16
    (none = float32)"""
    ref_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the frozen reference model (built only when algo.kl_coef > 0)"""
    device: Device = "auto"
    """where to train; auto picks cuda when available"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (saves memory on real models)"""
    attn_implementation: str | None = None
    """passed to from_pretrained (e.g. sdpa, flash_attention_2); null keeps the default"""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """the tiny model built when path is null"""

    def __post_init__(self):
        self.autocast = canonical_precision(self.autocast)  # type: ignore[assignment]


@dataclasses.dataclass
class TaskConfig:
    name: Literal["kk", "math", "arithmetic"] = "arithmetic"
    """task from pmalopti.tasks (rewards, prompts, difficulty)"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of get_task (e.g. {max_digits: 2})"""
    train_path: str | None = None
    """parquet/jsonl file(s) of training samples (comma-separated); null generates them"""
    eval_path: str | None = None
    """parquet/jsonl file(s) of held-out samples (comma-separated); null generates them"""
    train_size: int | None = bounded(2000, ge=1)
    """number of training samples (null: all of train_path)"""
    eval_size: int | None = bounded(64, ge=1)
    """number of held-out samples (null: all of eval_path)"""
    chat: bool = False
    """render prompts with the tokenizer's chat template (instruct models)"""


@dataclasses.dataclass
class RolloutConfig:
    prompts_per_step: int = bounded(8, ge=1)
    """P: prompts sampled per step"""
    group_size: int = bounded(8, ge=2)
    """G: completions per prompt (the group of the group advantage; it needs 2)"""
    temperature: float = bounded(1.0, gt=0)
    """sampling temperature T; old log-probs are computed at the same T"""
    max_new_tokens: int = bounded(16, ge=1)
    """maximum response length in tokens"""
    max_prompt_tokens: int = bounded(512, ge=1)
    """prompts longer than this are an error (they would be silently truncated otherwise)"""
    stop: list[str] = field(default_factory=list)
    """stop strings: a response ends with the token that completes one (besides eos)"""
    engine: Literal["loop", "hf"] = "loop"
    """sampling engine: our KV-cache loop (faster on small models) or transformers generate"""
    batch_size: int = bounded(256, ge=1)
    """sequences generated at once (old/ref log-probs go in chunks of algo.micro_batch_size)"""

    def __post_init__(self):
        _check(all(isinstance(s, str) and s for s in self.stop), "rollout.stop: empty stop string")


@dataclasses.dataclass
class AlgoConfig:
    adv_scale: Literal["group", "none"] = "group"
    """group: (r − mean)/(std + 1e-6) (GRPO); none: r − mean (Dr. GRPO)"""
    alpha: float = bounded(0.0, ge=0, le=1)
    """AR: advantages scaled by (α·π_old + 1 − α); 0 is plain GRPO (paper: 0.3 K&K, 0.1 math)"""
    eta: float | None = bounded(None, ge=0, lt=1)
    """Lopti threshold: tokens with π_old < η update first; null or 0 is one pass (paper: 0.5)"""
    clip_low: float = bounded(0.2, ge=0, lt=1)
    """ε_low of the clipped ratio"""
    clip_high: float = bounded(0.2, ge=0)
    """ε_high of the clipped ratio (paper: 0.24)"""
    clip_c: float = bounded(10.0, gt=1)
    """dual-clip constant c for negative advantages (paper: 10)"""
    kl_coef: float = bounded(0.0, ge=0)
    """β of the k3 KL to the frozen reference (paper: 1e-3); 0 never builds the reference"""
    agg: Agg = "token-mean"
    """loss aggregation: token-mean over the minibatch (verl 0.9.1); micro-token-mean, the token-mean
    of each micro-batch ÷ the accumulation steps (the paper authors' code; depends on
    micro_batch_size); seq-mean-token-mean (TRL grpo); seq-mean-token-sum-norm (Dr. GRPO)"""
    kl_log_ratio_clamp: Literal[5, 20] = 20
    """bound b of the clamp of logπ_ref − logπ to [−b, b] inside the k3 KL: 20 as verl 0.9.1,
    5 as the paper authors' code"""
    ppo_epochs: int = bounded(1, ge=1)
    """sweeps over the rollout batch per pass"""
    minibatch_size: int = bounded(64, ge=1)
    """sequences per optimizer step (must divide P·G)"""
    micro_batch_size: int = bounded(64, ge=1)
    """sequences per forward/backward (gradient accumulation; must divide minibatch_size)"""
    shuffle: bool = False
    """shuffle sequences into minibatches (with the trainer's seeded generator)"""

    def __post_init__(self):
        _check(self.agg in AGG_MODES, f"algo.agg: {self.agg!r} is not one of {list(AGG_MODES)}")
        _check(
            self.kl_log_ratio_clamp in (5, 20),
            f"algo.kl_log_ratio_clamp must be 5 or 20, got {self.kl_log_ratio_clamp!r}",
        )
        _check(
            self.minibatch_size % self.micro_batch_size == 0,
            f"algo.micro_batch_size {self.micro_batch_size} must divide "
            f"algo.minibatch_size {self.minibatch_size}",
        )

    @property
    def lopti(self) -> bool:
        return bool(self.eta)


@dataclasses.dataclass
class OptimConfig:
    lr: float = bounded(1e-3, gt=0)
    """AdamW learning rate"""
    weight_decay: float = bounded(0.0, ge=0)
    """AdamW weight decay"""
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0, lt=1, length=2)
    """AdamW betas"""
    eps: float = bounded(1e-8, gt=0)
    """AdamW epsilon"""
    max_grad_norm: float | None = bounded(1.0, gt=0)
    """gradient clipping by global norm (null: none)"""
    warmup_steps: int = bounded(0, ge=0)
    """linear LR warm-up, in optimizer steps"""


@dataclasses.dataclass
class TrainConfig:
    steps: int = bounded(20, ge=1)
    """rollout steps (each: P·G completions, then the update)"""
    eval_every: int = bounded(10, ge=0)
    """greedy evaluation on the held-out set every E steps (0: only at the end)"""
    eval_at_start: bool = False
    """also evaluate the initial policy (logged as step 0)"""
    save_every: int = bounded(10, ge=0)
    """checkpoint every S steps (0: only at the end)"""
    keep_checkpoints: int = bounded(2, ge=0)
    """newest checkpoints kept (0: all)"""
    diag_every: int = bounded(0, ge=0)
    """token-probability bucket diagnostics (paper Fig. 1) every K steps (0: never; costs backwards)"""
    sample_every: int = bounded(10, ge=0)
    """print a few completions every N steps (0: never)"""
    entropy: bool = True
    """log the policy entropy (one extra softmax over the vocabulary per token)"""
    report_to: ReportTo = "none"
    """mirror metrics.jsonl to TensorBoard (RUN/tb) or Weights & Biases"""
    tensorboard: bool = False
    """old spelling of report_to: tensorboard"""
    threads: int = bounded(0, **THREADS)
    """CPU threads for torch (0 = auto: $PMALOPTI_THREADS, else one fewer than the usable cores)"""
    progress: bool = True
    """progress bar on stderr"""

    def __post_init__(self):
        if self.tensorboard:
            self.report_to, self.tensorboard = "tensorboard", False


@dataclasses.dataclass
class GRPOConfig:
    """`pmalopti grpo`: GRPO with Advantage Reweighting and Lopti (arXiv 2505.12929)."""

    output_dir: str = "runs/grpo-tiny"
    """run folder: config.yaml, metrics.jsonl, checkpoint-<step>/ (and init/ for a tiny model)"""
    seed: int = bounded(0, **SEED)
    """seed of model init, data order and sampling"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """policy model"""
    task: TaskConfig = field(default_factory=TaskConfig)
    """task and data"""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """sampling"""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """advantages, AR, Lopti, loss"""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """optimizer"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """loop, evaluation, logging, checkpoints"""

    def __post_init__(self):
        b = self.rollout.prompts_per_step * self.rollout.group_size
        _check(
            b % self.algo.minibatch_size == 0,
            f"algo.minibatch_size {self.algo.minibatch_size} must divide the rollout batch "
            f"rollout.prompts_per_step × rollout.group_size = {b}",
        )
