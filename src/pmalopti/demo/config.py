"""The demo's configuration: one dataclass holding each stage's own config, plus two size presets.

Each stage keeps the config class of the command it stands for (`PretrainConfig`, `SFTConfig`,
`GRPOConfig`), so `--set pretrain.train.steps=800` means exactly what `pmalopti pretrain --set
train.steps=800` means, and each stage's config is saved in its run folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

from pmalopti.config import ConfigError, load_config
from pmalopti.grpo.config import GRPOConfig
from pmalopti.lm.pretrain import PretrainConfig
from pmalopti.lm.sft import SFTConfig

Init = Literal["latest", "pma", "annealed"]

# Full size: a tiny model that learns some 1-2 digit addition on a 2-core CPU within ~10 minutes.
# Checkpoints every 25 steps; the stable phase is 50..700, the decay (anneal) phase 700..900.
FULL_PRETRAIN = [
    "model.hidden_size=96",
    "model.num_layers=3",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.vocab_size=400",
    "data.block_size=64",
    "data.val_fraction=0.02",
    "data.max_val_blocks=32",
    "train.steps=900",
    "train.batch_size=32",
    "train.save_every=25",
    "train.eval_every=25",
    "schedule.warmup_steps=50",
    "schedule.decay_steps=200",
    "schedule.decay_shape=linear",
    "optim.lr=3e-3",
    "report.n=6",
    "report.stride=1",
    "report.points=4",
]
FULL_SFT = [
    "data.task=arithmetic",
    "data.num_train=4000",
    "data.num_val=400",
    "data.max_length=24",
    "data.eval_generate=400",
    "optim.lr=3e-4",
    "schedule.warmup_steps=20",
    "schedule.decay_steps=0",
    "train.steps=800",
    "train.batch_size=32",
    "train.save_every=800",
    "train.eval_every=100",
]
FULL_GRPO = [
    "task.name=arithmetic",
    "task.train_size=2000",
    "task.eval_size=400",
    "rollout.prompts_per_step=16",
    "rollout.group_size=8",
    "rollout.temperature=1.0",
    "rollout.max_new_tokens=6",
    "algo.clip_low=0.2",
    "algo.clip_high=0.24",
    "algo.clip_c=10.0",
    "algo.kl_coef=0.0",
    "algo.agg=token-mean",
    "algo.minibatch_size=64",
    "algo.micro_batch_size=64",
    "optim.lr=1e-4",
    "train.steps=100",
    "train.eval_every=10",
    "train.save_every=0",
    "train.keep_checkpoints=1",
    "train.diag_every=10",
    "train.sample_every=0",
]

# Smoke size: every stage runs for a few steps (the default test suite runs it); numbers are real
# but the model learns little.
SMOKE = [
    "corpus.docs=600",
    "pretrain.model.hidden_size=32",
    "pretrain.model.num_layers=1",
    "pretrain.model.num_heads=2",
    "pretrain.model.num_kv_heads=1",
    "pretrain.model.vocab_size=300",
    "pretrain.data.block_size=32",
    "pretrain.data.max_val_blocks=4",
    "pretrain.train.steps=16",
    "pretrain.train.batch_size=8",
    "pretrain.train.save_every=2",
    "pretrain.train.eval_every=2",
    "pretrain.schedule.warmup_steps=2",
    "pretrain.schedule.decay_steps=4",
    "pretrain.report.n=3",
    "pretrain.report.points=2",
    "sft.data.num_train=64",
    "sft.data.num_val=16",
    "sft.data.eval_generate=16",
    "sft.train.steps=4",
    "sft.train.batch_size=8",
    "sft.train.save_every=4",
    "sft.train.eval_every=2",
    "sft.schedule.warmup_steps=1",
    "grpo.optim.warmup_steps=0",
    "grpo.task.train_size=32",
    "grpo.task.eval_size=16",
    "grpo.rollout.prompts_per_step=4",
    "grpo.rollout.group_size=4",
    "grpo.algo.minibatch_size=8",
    "grpo.algo.micro_batch_size=8",
    "grpo.train.steps=3",
    "grpo.train.eval_every=3",
    "grpo.train.diag_every=1",
]


def _preset(cls, overrides: list[str]):
    return lambda: load_config(cls, None, overrides)


@dataclasses.dataclass
class CorpusConfig:
    docs: int = 24000
    """documents generated for pre-training (arithmetic problems with answers, grammar text)"""
    arithmetic_share: float = 1.0
    """share of the documents that are arithmetic problems; the rest is a small grammar with
    knights and knaves (pmalopti.lm.data.grammar_document)"""

    def __post_init__(self):
        if self.docs < 20:
            raise ValueError(f"corpus.docs must be >= 20, got {self.docs}")
        if not 0 < self.arithmetic_share <= 1:
            raise ValueError(
                f"corpus.arithmetic_share must be in (0, 1], got {self.arithmetic_share}"
            )


@dataclasses.dataclass
class DemoConfig:
    """`pmalopti demo`: pre-training with online PMA, PMA-init SFT, GRPO vs GRPO + AR + Lopti."""

    seed: int = 0
    """seed of every stage (it replaces the stages' own seed fields)"""
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)
    """the pre-training corpus, generated locally"""
    task_kwargs: dict[str, Any] = dataclasses.field(default_factory=lambda: {"max_digits": 2})
    """options of the task (`get_task(sft.data.task, **task_kwargs)`) for the corpus, SFT and
    GRPO; passed to the SFT and GRPO runs as sft.data.task_kwargs and grpo.task.kwargs"""
    pma_method: str = "sma"
    """merge used for PMA-init: sma, wma or ema:<alpha> (the paper's default is SMA)"""
    sft_inits: list[Init] = dataclasses.field(default_factory=lambda: ["latest", "pma"])
    """SFT starting points: latest (the live checkpoint at the end of the stable phase), pma (the
    merge of the N checkpoints ending there), annealed (the end of the decay phase)"""
    grpo_init: Init = "pma"
    """which SFT run GRPO starts from (fixed in advance, not the better one)"""
    ar_alpha: float = 0.3
    """AR's α in the AR + Lopti run (the paper: 0.3 on K&K, 0.1 on math)"""
    lopti_eta: float = 0.5
    """Lopti's η in the AR + Lopti run (the paper: 0.5)"""
    pretrain: PretrainConfig = dataclasses.field(
        default_factory=_preset(PretrainConfig, FULL_PRETRAIN)
    )
    """stage 1, `pmalopti pretrain` settings (data.path and seed are set by the demo)"""
    sft: SFTConfig = dataclasses.field(default_factory=_preset(SFTConfig, FULL_SFT))
    """stage 2, `pmalopti sft` settings (init_from and seed are set by the demo)"""
    grpo: GRPOConfig = dataclasses.field(default_factory=_preset(GRPOConfig, FULL_GRPO))
    """stage 3, `pmalopti grpo` settings (model.init_from, output_dir, algo.alpha/eta and seed
    are set by the demo)"""

    def __post_init__(self):
        from pmalopti.pma.spec import MergeSpec

        try:
            MergeSpec.parse(self.pma_method)
        except ValueError as exc:
            raise ValueError(
                f"pma_method: {self.pma_method!r}: {exc} (use sma, wma or ema:<alpha>)"
            ) from None
        if not self.sft_inits:
            raise ValueError("sft_inits must name at least one starting point")
        if len(set(self.sft_inits)) != len(self.sft_inits):
            raise ValueError(f"sft_inits has duplicates: {self.sft_inits}")
        if self.grpo_init not in self.sft_inits:
            raise ValueError(
                f"grpo_init {self.grpo_init!r} must be one of sft_inits {self.sft_inits}"
            )
        if "annealed" in self.sft_inits and self.pretrain.schedule.decay_steps == 0:
            raise ValueError("sft_inits has 'annealed' but pretrain.schedule.decay_steps is 0")
        if not 0 < self.ar_alpha <= 1:
            raise ValueError(f"ar_alpha must be in (0, 1], got {self.ar_alpha}")
        if not 0 < self.lopti_eta < 1:
            raise ValueError(f"lopti_eta must be in (0, 1), got {self.lopti_eta}")
        for where, kw in (
            ("sft.data.task_kwargs", self.sft.data.task_kwargs),
            ("grpo.task.kwargs", self.grpo.task.kwargs),
        ):
            # One task for the corpus, SFT and GRPO: the stages get task_kwargs when they run.
            if kw and kw != self.task_kwargs:
                raise ValueError(f"{where} {kw} differs from task_kwargs {self.task_kwargs}")
        if self.sft.data.task != self.grpo.task.name:
            raise ValueError(
                f"sft.data.task ({self.sft.data.task}) and grpo.task.name ({self.grpo.task.name}) "
                "must be the same task"
            )
        p = self.pretrain
        if p.schedule.warmup_steps % p.train.save_every or (
            (p.train.steps - p.schedule.decay_steps) % p.train.save_every
        ):
            raise ValueError(
                "pretrain.schedule.warmup_steps and pretrain.train.steps - "
                "pretrain.schedule.decay_steps must be multiples of pretrain.train.save_every, "
                "so that checkpoints mark the start and the end of the stable phase"
            )
        stable = (p.train.steps - p.schedule.decay_steps - p.schedule.warmup_steps) // (
            p.train.save_every
        )
        if stable < (p.report.n - 1) * p.report.stride:
            raise ValueError(
                f"the stable phase holds {stable + 1} checkpoints, too few for a merge of "
                f"pretrain.report.n={p.report.n} every pretrain.report.stride={p.report.stride}"
            )


def _as_overrides(tree: dict, prefix: str = "") -> list[str]:
    """A YAML mapping as dotted `key=value` overrides (values re-parsed as YAML by load_config)."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += _as_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
            if out[-1].endswith("\n..."):
                out[-1] = out[-1][: -len("\n...")]
    return out


def load_demo_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, smoke: bool = False
) -> DemoConfig:
    """The full preset (or smoke with `smoke`), then a YAML file, then `--set` overrides."""
    if not smoke:
        return load_config(DemoConfig, path, overrides)
    pre = list(SMOKE)
    if path is not None:  # the file must override the smoke sizes, not the other way round
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        pre += _as_overrides(tree)
    return load_config(DemoConfig, None, [*pre, *(overrides or [])])
