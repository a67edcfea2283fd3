"""Online PMA in the built-in training loop: the `online_pma` section of a pretrain config.

One `pmalopti.pma.online.OnlineAverager` per merge method folds the live weights into running
float32 averages while training (arXiv 2505.12082 Sec. 3: the last N snapshots V steps apart),
and each merge is evaluated on the validation batches the moment it completes. Losses go to
RUN/online_pma.jsonl; merges at `save_steps` are written as Hugging Face folders.
On `--resume` the averagers start afresh at the resumed step (open windows restart).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pmalopti.config import bounded
from pmalopti.pma.spec import MergeSpec

SAVE_DIR = "online_pma"


@dataclasses.dataclass
class OnlinePMAConfig:
    enabled: bool = False
    """average the weights while training and evaluate every merge (RUN/online_pma.jsonl)"""
    methods: list[str] = dataclasses.field(default_factory=lambda: ["sma"])
    """merge methods: sma, wma, ema:<alpha>"""
    n: int = bounded(5, ge=1)
    """N, snapshots per merge (the paper uses 10)"""
    interval: int = bounded(0, ge=0)
    """V, steps between two snapshots of one merge; 0 = train.save_every (the saved checkpoints)"""
    every: int = bounded(0, ge=0)
    """steps between merge points; 0 = interval (a merge at every snapshot once a window fills)"""
    start_step: int = bounded(-1, ge=-1)
    """no snapshot before this step; -1 = schedule.warmup_steps (windows stay out of the warmup)"""
    save_steps: list[int] = dataclasses.field(default_factory=list)
    """merge points whose merges are written as HF folders RUN/online_pma/<method>-step<S>"""

    def __post_init__(self):
        if not self.methods:
            raise ValueError("online_pma.methods must name at least one method")
        for m in self.methods:
            try:
                MergeSpec.parse(m)
            except ValueError as exc:
                raise ValueError(f"online_pma.methods: {m!r}: {exc}") from None


class OnlinePMAHook:
    """A loop hook `hook(step, record)`: online merges, each evaluated when it completes."""

    def __init__(
        self,
        cfg: OnlinePMAConfig,
        model,
        *,
        save_every: int,
        warmup_steps: int,
        start: int,
        val_batches: list[dict],
        eval_dtype: str = "auto",
        run_dir: Path | None = None,
    ) -> None:
        from pmalopti.pma.online import OnlineAverager

        interval = cfg.interval or save_every
        self.model, self.val_batches, self.eval_dtype = model, val_batches, eval_dtype
        self.save_steps, self.run_dir = set(cfg.save_steps), run_dir
        self.averagers = {}
        for m in cfg.methods:
            spec = MergeSpec.parse(m)
            self.averagers[m] = OnlineAverager(
                model,
                method=spec.method,  # type: ignore[arg-type]
                alpha=spec.alpha,
                n=cfg.n,
                interval=interval,
                every=cfg.every or interval,
                start_step=warmup_steps if cfg.start_step < 0 else cfg.start_step,
            )
        self.rows: list[dict] = []
        for avg in self.averagers.values():
            avg.step(start)  # the starting weights, in case a window begins there

    def __call__(self, step: int, record: dict) -> None:
        from pmalopti.lm.loss import evaluate_batches

        device = next(self.model.parameters()).device
        for m, avg in self.averagers.items():
            if not avg.step(step):
                continue
            with avg.swap_in():
                loss = evaluate_batches(self.model, self.val_batches, device, self.eval_dtype)
            self.rows.append({"step": step, "method": m, "val_loss": loss})
            if step in self.save_steps and self.run_dir is not None:
                self.save(m, avg, step)
            if self.run_dir is not None:
                self.write_log()

    def save(self, method: str, avg, step: int) -> Path:
        """The merge at `step` as a HF folder (the model's config, pmalopti_merge.json)."""
        from pmalopti.pma.writer import write_hf_checkpoint

        assert self.run_dir is not None
        out = self.run_dir / SAVE_DIR / f"{method.replace(':', '')}-step{step}"
        cfg = avg.config
        return write_hf_checkpoint(
            avg.merged_state_dict(),
            out,
            config=getattr(self.model, "config", None),
            metadata={
                "method": str(MergeSpec.parse(method)),
                "online": True,
                "merge_step": step,
                "steps": [step - (cfg.n - 1 - i) * cfg.interval for i in range(cfg.n)],
                "weights": cfg.weights,
            },
            force=True,
        )

    def write_log(self) -> None:
        from pmalopti.runtime.fs import atomic_write_text

        assert self.run_dir is not None
        text = "".join(json.dumps(r) + "\n" for r in self.rows)
        atomic_write_text(self.run_dir / "online_pma.jsonl", text)


def online_pma_hook(cfg, run_dir, model, val_batches, resume_from=None, start_step=0):
    """The hook for a pretrain run (`cfg` a PretrainConfig): starts at the run's first step."""
    from pmalopti.pma.select import read_trainer_state

    start = (read_trainer_state(resume_from)[0] or 0) if resume_from else start_step
    return OnlinePMAHook(
        cfg.online_pma,
        model,
        save_every=cfg.train.save_every,
        warmup_steps=cfg.schedule.warmup_steps,
        start=start,
        val_batches=val_batches,
        eval_dtype=cfg.train.dtype,
        run_dir=Path(run_dir),
    )
