"""The demo's configuration: one dataclass holding each stage's own config; sizes are YAML presets.

Each stage keeps the config class of the command it stands for (`PretrainConfig`, `SFTConfig`,
`GRPOConfig`), so `--set pretrain.train.steps=800` means exactly what `pmalopti pretrain --set
train.steps=800` means, and each stage's config is saved in its run folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pmalopti.config import SEED, bounded, load_config
from pmalopti.grpo.config import GRPOConfig
from pmalopti.lm.pretrain import PretrainConfig
from pmalopti.lm.sft import SFTConfig

Init = Literal["latest", "pma", "annealed"]
PRESETS = Path(__file__).resolve().parent.parent / "configs"
"""the demo's size presets, `demo_full.yaml` and `demo_smoke.yaml` (the repository's configs/)"""


@dataclasses.dataclass
class CorpusConfig:
    docs: int = bounded(24000, ge=20)
    """documents generated for pre-training (arithmetic problems with answers, grammar text)"""
    arithmetic_share: float = bounded(1.0, gt=0, le=1)
    """share of the documents that are arithmetic problems; the rest is a small grammar with
    knights and knaves (pmalopti.lm.data.grammar_document)"""


@dataclasses.dataclass
class DemoConfig:
    """`pmalopti demo`: pre-training with online PMA, PMA-init SFT, GRPO vs GRPO + AR + Lopti."""

    seed: int = bounded(0, **SEED)
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
    ar_alpha: float = bounded(0.3, gt=0, le=1)
    """AR's α in the AR + Lopti run (the paper: 0.3 on K&K, 0.1 on math)"""
    lopti_eta: float = bounded(0.5, gt=0, lt=1)
    """Lopti's η in the AR + Lopti run (the paper: 0.5)"""
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    """stage 1, `pmalopti pretrain` settings (data.path and seed are set by the demo)"""
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    """stage 2, `pmalopti sft` settings (init_from and seed are set by the demo)"""
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
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


def load_demo_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, smoke: bool = False
) -> DemoConfig:
    """The full preset (then the smoke preset with `smoke`), then a YAML file, then `--set`."""
    presets = [PRESETS / "demo_full.yaml"] + ([PRESETS / "demo_smoke.yaml"] if smoke else [])
    return load_config(DemoConfig, [*presets, *([path] if path is not None else [])], overrides)
