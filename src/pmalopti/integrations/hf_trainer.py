"""`PMACallback`: online PMA inside Hugging Face `Trainer` and TRL's trainers.

A thin `TrainerCallback` over `OnlineAverager`: it snapshots after every optimizer step, writes
each merge as a Hugging Face folder `<output_dir>/pma-<step>/` (loadable by
`AutoModelForCausalLM.from_pretrained`, vLLM, lm-eval), or as a DCP folder each rank writes its
shards into, and, when the trainer evaluates, adds the merged model's loss beside the live one
(`eval_pma_loss` next to `eval_loss`, shown by reporters as `eval/pma_loss` and `eval/loss`).
With an FSDP2 (DTensor) model no rank ever holds the whole merge (`pmalopti.pma.dcp_online`).
Its averager state (two float32 copies of the weights) goes into Trainer checkpoints only with
`save_state=True`; without it a resumed run restarts its windows (see docs/online-pma.md).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import TrainerCallback

from pmalopti.pma.dcp_online import save_merge_dcp, save_merge_hf
from pmalopti.pma.online import Device, Method, OnlineAverageConfig, OnlineAverager, window_steps

logger = logging.getLogger(__name__)

STATE_FILE = "pma_online_state.pt"


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _state_file(checkpoint_dir: Path) -> Path:
    rank, world = _rank_and_world()
    # Each rank holds only its own shards of the accumulators (FSDP2), so each saves its own file.
    return checkpoint_dir / (STATE_FILE if world == 1 else f"pma_online_state-rank{rank}.pt")


class EvalUnsupported(ValueError):
    """The trainer's eval batches give no language-model loss (e.g. GRPO prompt batches)."""


def _batch_size(batch: Any) -> int:
    for v in batch.values() if isinstance(batch, dict) else batch:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    raise ValueError("eval batch has no tensor to take a batch size from")


@torch.no_grad()
def eval_loss(model: torch.nn.Module, dataloader: Any) -> float:
    """Mean of the model's per-batch loss weighted by batch size: the Trainer's `eval_loss` rule.

    (`Trainer.evaluation_loop` repeats each batch's loss batch-size times and takes the mean.)
    Distributed: sums are all-reduced, so every rank gets the same value.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (loss * count, count)
    try:
        for batch in dataloader:
            if not isinstance(batch, Mapping):
                raise EvalUnsupported(f"eval batches are {type(batch).__name__}, not a mapping")
            batch = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            loss = getattr(model(**batch), "loss", None)
            if loss is None:
                raise EvalUnsupported("the model returned no loss on an eval batch (no labels?)")
            bs = _batch_size(batch)
            total += torch.stack([loss.detach().double() * bs, torch.tensor(bs, device=device)])
    finally:
        model.train(was_training)
    if _rank_and_world()[1] > 1:
        torch.distributed.all_reduce(total)
    if total[1] == 0:
        raise ValueError("the eval dataloader yielded no batches")
    return (total[0] / total[1]).item()


def _metric_prefix(metrics: dict[str, Any]) -> str:
    """'eval', or 'eval_<name>' when the trainer evaluates a dict of datasets."""
    if "eval_loss" in metrics:
        return "eval"
    for suffix in ("_runtime", "_loss"):  # evaluate() always adds <prefix>_runtime
        for k in metrics:
            if k.endswith(suffix):
                return k[: -len(suffix)]
    return "eval"


class PMACallback(TrainerCallback):
    """Pre-trained Model Averaging while a Hugging Face / TRL trainer runs.

    Args:
        method, n, interval, every, alpha, start_step, device: the merge schedule, as in
            `OnlineAverageConfig` (N snapshots V = `interval` steps apart, merge every M = `every`
            steps; default M = N*V).
        output_dir: where `pma-<step>/` folders go; default the trainer's `output_dir`.
        save: write each merge to `pma-<step>/`.
        save_format: 'hf' (safetensors folder, written by rank 0 one tensor at a time) or 'dcp'
            (every rank writes its own shards; `dcp.load` or `pmalopti merge --format hf` read it).
        save_state: also save the averager state (`pma_online_state*.pt`: the open windows, two
            float32 copies of the weights) into every Trainer checkpoint, so a resumed run keeps
            its open windows. Default off: a resumed run restarts them.
        evaluate: when the trainer evaluates (its `eval_strategy` is not "no"), also evaluate the
            latest merge and add `eval_pma_loss`; the trainer is asked to evaluate at every merge
            point so the two losses share a step.
        dtype: dtype of the written weights (default: the live parameters' dtype).
        shard_size: bytes per safetensors shard.
        force: replace existing `pma-<step>` folders this run would write (else training refuses
            to start, rather than failing at the first merge).
        trainer: optional. The eval metrics dict a trainer has logged is already in the reporters
            (TensorBoard, W&B) by the time callbacks see it; pass the trainer (as TRL's own
            callbacks do: `trainer.add_callback(PMACallback(..., trainer=trainer))`) to also send
            `eval_pma_loss` to them through `trainer.log`. Without it the value is still added to
            the evaluation's metrics and to its `trainer_state.json` log entry.
    """

    def __init__(
        self,
        *,
        method: Method = "sma",
        n: int = 10,
        interval: int = 10,
        every: int | None = None,
        alpha: float | None = None,
        start_step: int = 0,
        device: Device = "cpu",
        output_dir: str | Path | None = None,
        save: bool = True,
        save_format: Literal["hf", "dcp"] = "hf",
        save_state: bool = False,
        evaluate: bool = True,
        dtype: torch.dtype | None = None,
        shard_size: int = 5_000_000_000,
        force: bool = False,
        trainer: Any = None,
    ) -> None:
        self.config = OnlineAverageConfig(
            method=method,
            n=n,
            interval=interval,
            every=every,
            alpha=alpha,
            start_step=start_step,
            device=device,
        )
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.save = save
        if save_format not in ("hf", "dcp"):
            raise ValueError(f"save_format: {save_format!r} is not allowed; choose 'hf' or 'dcp'")
        self.save_format = save_format
        self.save_state = save_state
        self.evaluate = evaluate
        self.dtype = dtype
        self.shard_size = shard_size
        self.trainer = trainer
        self.force = force
        self.averager: OnlineAverager | None = None
        self.written: list[Path] = []
        self._pma_losses: dict[tuple[int, str], float] = {}
        self._eval_unsupported = False

    # -- events -----------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("PMACallback: the trainer passed no model to on_train_begin")
        # A fresh averager per train() call: windows come from this run or its checkpoint only.
        self.averager = OnlineAverager(model, config=self.config)
        self._pma_losses.clear()
        if state.global_step > 0:
            self._resume(args, state)
        if self.save and state.is_world_process_zero and not self.force:
            self._refuse_existing(args, state.global_step)
        # A window may start at the first step; it snapshots the weights the run starts from.
        self.averager.step(state.global_step)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.averager is None:
            return control
        if not self.averager.step(state.global_step):
            return control
        if self.save:
            self._write(args, state, model, processing_class)
        if self.evaluate and not self._eval_unsupported and args.eval_strategy != "no":
            control.should_evaluate = True
        return control

    def on_evaluate(
        self, args, state, control, metrics=None, model=None, eval_dataloader=None, **kwargs
    ):
        avg = self.averager
        if not self.evaluate or self._eval_unsupported or eval_dataloader is None:
            return control
        if avg is None or avg.merged_step is None:
            return control
        if metrics is None:
            return control
        prefix = _metric_prefix(metrics)
        key = (avg.merged_step, prefix)
        if key not in self._pma_losses:
            try:
                with avg.swap_in():
                    self._pma_losses[key] = eval_loss(model, eval_dataloader)
            except EvalUnsupported as exc:
                logger.warning("PMACallback: eval_pma_loss is not logged for this trainer: %s", exc)
                self._eval_unsupported = True
                return control
        pma = {f"{prefix}_pma_loss": self._pma_losses[key], f"{prefix}_pma_step": avg.merged_step}
        metrics.update(pma)
        # The trainer appended this evaluation's log entry just before calling us; put the
        # merged loss into the same entry so trainer_state.json has both side by side.
        for entry in reversed(state.log_history):
            if entry.get("step") == state.global_step and f"{prefix}_loss" in entry:
                entry.update(pma)
                break
        if self.trainer is not None:
            self.trainer.log(dict(pma))
        logger.info(
            "step %d: %s_loss %.4f, merged (step %d) %.4f",
            state.global_step,
            prefix,
            metrics.get(f"{prefix}_loss", float("nan")),
            avg.merged_step,
            pma[f"{prefix}_pma_loss"],
        )
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.averager is None or not self.save_state:
            return control
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            torch.save(self.averager.state_dict(), _state_file(ckpt))
        return control

    # -- helpers ----------------------------------------------------------------------------

    def _resume(self, args, state) -> None:
        path = _state_file(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        if not self.save_state:
            logger.info(
                "PMACallback: resuming at step %d; windows open at the checkpoint restart "
                "(save_state=False)",
                state.global_step,
            )
            return
        if not path.is_file():
            logger.warning(
                "PMACallback: resuming at step %d without averager state (%s not found); "
                "merges whose windows started earlier are skipped",
                state.global_step,
                path,
            )
            return
        assert self.averager is not None
        self.averager.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def _pma_dir(self, args) -> Path:
        return self.output_dir or Path(args.output_dir)

    def _refuse_existing(self, args, after_step: int) -> None:
        root = self._pma_dir(args)
        if not root.is_dir():
            return
        clash = sorted(
            d.name
            for d in root.glob("pma-*")
            if d.name[4:].isdigit() and int(d.name[4:]) > after_step
        )
        if clash:
            raise FileExistsError(
                f"PMACallback: {root} already holds merges this run would write ({', '.join(clash[:5])}); "
                "remove them, choose another output_dir, or pass force=True"
            )

    def _write(self, args, state, model, processing_class) -> None:
        assert self.averager is not None
        step = self.averager.merged_step
        cfg = self.config
        out = self._pma_dir(args) / f"pma-{step}"
        metadata = {
            "method": cfg.method,
            "alpha": cfg.alpha,
            "n": cfg.n,
            "interval": cfg.interval,
            "every": cfg.every,
            "steps": window_steps(step, cfg.n, cfg.interval),
            "weights": cfg.weights,
            "merge_step": step,
            "made_by": "pmalopti.integrations.hf_trainer.PMACallback (online)",
        }
        with tempfile.TemporaryDirectory() as src:
            # config, generation config and tokenizer go through the writer's copy step, so the
            # folder appears complete or not at all.
            if state.is_world_process_zero:
                if getattr(model, "config", None) is not None:
                    model.config.save_pretrained(src)
                gen = getattr(model, "generation_config", None)
                if gen is not None:
                    gen.save_pretrained(src)
                if processing_class is not None and hasattr(processing_class, "save_pretrained"):
                    processing_class.save_pretrained(src)
            kwargs = dict(dtype=self.dtype, source_dir=src, metadata=metadata, force=self.force)
            if self.save_format == "dcp":
                save_merge_dcp(self.averager, out, **kwargs)
            else:
                save_merge_hf(self.averager, out, shard_size=self.shard_size, **kwargs)
        self.written.append(out)
        logger.info("PMACallback: wrote the step-%d merge to %s", step, out)
