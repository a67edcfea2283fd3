"""AR and Lopti inside TRL's `GRPOTrainer` (arXiv 2505.12929 §4), for accelerate/DeepSpeed/vLLM runs.

    from pmalopti.integrations.trl import LoptiGRPOConfig, LoptiGRPOTrainer
    args = LoptiGRPOConfig(output_dir="out", ar_alpha=0.3, lopti_eta=0.5, beta=1e-3, delta=10.0)
    LoptiGRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=ds).train()

The subclass changes two methods and keeps everything else TRL's own (generation, rewards,
group advantages, the clipped loss of `loss_type`, KL, logging):

- `_generate_and_score_completions`: after TRL scored a generation batch, the sampling policy's
  per-token log-probs π_old (the training model at the generation temperature, which TRL's fused
  LM head applies) are made sure to exist — TRL skips them when `num_iterations == 1` and
  `steps_per_generation == gradient_accumulation_steps` — and the (B,) advantages become AR's
  (B, T) ones. With Lopti the batch's two update passes (`pmalopti.rl.lopti_passes`: advantages
  and KL mask per pass) are computed here, once per generation batch, and buffered with it.
- `_compute_loss`: during training, picks the pass of the current sweep and hands its advantages
  (and, with β ≠ 0, its KL mask) to TRL's loss.

Lopti maps onto TRL's buffering like this: a generation batch is split into
`steps_per_generation` slices, `gradient_accumulation_steps` slices make one optimizer step
(one minibatch), and TRL replays the whole buffer `num_iterations` times before generating again.
Lopti's two sweeps are those replays: with `num_iterations = 2μ` the first μ replays update the
low-probability tokens and the last μ the high-probability ones, all clipping against the π_old
stored at generation time. `LoptiGRPOConfig` sets `num_iterations = 2μ` itself from `lopti_eta`
and `lopti_epochs` (μ) and refuses configurations where the sweeps would not be exact.

TRL's `delta` is the paper's dual clip: TRL clamps the ratio at δ before its min(ratio·Â,
clip(ratio)·Â), which for Â < 0 caps the loss at −δ·Â exactly as verl's `clip_ratio_c` (and for
Â > 0 changes nothing when δ > 1 + ε_high). The paper's runs use δ = c = 10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pmalopti.rl import lopti_passes, reweight_advantages, token_prob_diagnostics

try:
    from trl import GRPOConfig, GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pmalopti.integrations.trl needs TRL (>= 1.16): pip install 'pmalopti[trl]'"
    ) from exc

__all__ = ["LoptiGRPOConfig", "LoptiGRPOTrainer"]

# TRL loss types whose denominator does not read the loss mask, so restricting the mask to one
# Lopti group (needed to restrict the KL term) keeps both passes on the single-pass denominator.
_MASK_FREE_DENOMINATOR = ("dapo", "dr_grpo", "cispo")

# Multimodal inputs TRL buffers with a generation batch; the π_old forward needs them too.
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


@dataclass
class LoptiGRPOConfig(GRPOConfig):
    """`GRPOConfig` plus Advantage Reweighting (`ar_alpha`) and Lopti (`lopti_eta`, `lopti_epochs`).

    With Lopti, `num_iterations` (TRL's replays of a generation batch) is set to 2·`lopti_epochs`:
    TRL's default 1 is replaced, the same value is kept, any other value is refused. Lopti also
    needs each optimizer step inside one sweep (`steps_per_generation` a multiple of `gradient_accumulation_steps`),
    no entropy bonus (it would be counted in both sweeps) and, with `beta` ≠ 0, a loss whose
    denominator ignores the mask (`loss_type` "dapo", "dr_grpo" or "cispo"), token-level
    importance sampling, no `off_policy_mask_threshold` and `top_entropy_quantile` 1.
    """

    ar_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Advantage Reweighting α in [0, 1]: each token's advantage is scaled by "
            "α·π_old + 1 − α (arXiv 2505.12929 §4.1). 0 is plain GRPO; the paper uses 0.3 on "
            "K&K and 0.1 on math."
        },
    )
    lopti_eta: float | None = field(
        default=None,
        metadata={
            "help": "Lopti threshold η in [0, 1): tokens with π_old < η are updated in a first "
            "sweep over the generation batch, the others in a second (§4.2). None or 0 is one "
            "sweep; the paper uses 0.5. Sets num_iterations to 2·lopti_epochs."
        },
    )
    lopti_epochs: int = field(
        default=1,
        metadata={
            "help": "μ: epochs over the generation batch in each Lopti sweep (the paper: 1). TRL "
            "replays the batch num_iterations = 2μ times: μ for the low tokens, then μ for the "
            "high ones."
        },
    )

    def __post_init__(self):
        if self.lopti_enabled:
            self._set_lopti_iterations()
        super().__post_init__()
        if not 0.0 <= self.ar_alpha <= 1.0:
            raise ValueError(f"ar_alpha must be in [0, 1]; got {self.ar_alpha}")
        if not self.lopti_enabled:
            return
        if not 0.0 < self.lopti_eta < 1.0:
            raise ValueError(f"lopti_eta must be None or in [0, 1); got {self.lopti_eta}")
        problems = []
        if self.steps_per_generation % self.gradient_accumulation_steps:
            problems.append(
                f"steps_per_generation ({self.steps_per_generation}) is not a multiple of "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}), so an "
                "optimizer step would mix the two sweeps"
            )
        if self.entropy_coef != 0 or self.use_adaptive_entropy:
            problems.append("the entropy bonus would be added in both sweeps: set entropy_coef=0")
        if self.beta != 0:
            # With β ≠ 0 each pass restricts TRL's loss mask to its group so the KL term is
            # restricted too (docs/design.md: advantages *and* KL zeroed on the other group).
            why = (
                "with beta != 0 the KL term is restricted to each sweep's tokens via the mask, so "
            )
            if self.loss_type not in _MASK_FREE_DENOMINATOR:
                problems.append(
                    why + f"loss_type must be one of {list(_MASK_FREE_DENOMINATOR)} (its "
                    f"denominator ignores the mask); got {self.loss_type!r}"
                )
            if self.importance_sampling_level != "token":
                problems.append(why + "importance_sampling_level must be 'token'")
            if self.off_policy_mask_threshold is not None:
                problems.append(why + "off_policy_mask_threshold must be None")
            if self.top_entropy_quantile < 1.0:
                problems.append(why + "top_entropy_quantile must be 1.0")
        if problems:
            raise ValueError("lopti_eta: cannot run Lopti exactly: " + "; ".join(problems))

    @property
    def lopti_enabled(self) -> bool:
        return self.lopti_eta is not None and self.lopti_eta != 0

    def _set_lopti_iterations(self) -> None:
        """num_iterations = 2μ: Lopti's two sweeps are TRL's replays of the generation batch.
        TRL's default (1) is replaced; a user value other than 2μ contradicts μ and is refused."""
        if not (isinstance(self.lopti_epochs, int) and self.lopti_epochs >= 1):
            raise ValueError(f"lopti_epochs must be an integer >= 1; got {self.lopti_epochs!r}")
        replays = 2 * self.lopti_epochs
        if self.num_iterations == 1:  # TRL's default: one replay cannot hold two sweeps
            self.num_iterations = replays
        elif self.num_iterations != replays:
            raise ValueError(
                f"lopti_eta: num_iterations is {self.num_iterations}, but Lopti runs "
                f"lopti_epochs={self.lopti_epochs} epochs per sweep, i.e. {replays} replays of "
                "the generation batch: leave num_iterations unset (or set lopti_epochs="
                f"num_iterations/2 for an even num_iterations)"
            )


class LoptiGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` with AR and Lopti; with `ar_alpha=0` and `lopti_eta=None` it is TRL's trainer.

    `args` may be a plain `GRPOConfig` (then nothing changes). Extra logged metrics, per
    generation batch when AR or Lopti is on: "lopti/low_token_fraction" and the paper's Fig. 1
    shares "diag/token_share/<bucket>", "diag/grad_share/<bucket>" (`token_prob_diagnostics`).
    """

    _lopti_generated_at: int = 0

    @property
    def _ar_alpha(self) -> float:
        return float(getattr(self.args, "ar_alpha", 0.0))

    @property
    def _lopti_eta(self) -> float | None:
        return getattr(self.args, "lopti_eta", None) or None

    def _uses_old_logps(self) -> bool:
        """Whether AR or Lopti need π_old of every generation batch."""
        return self._ar_alpha != 0 or self._lopti_eta is not None

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        if not self._uses_old_logps():
            return out
        old = out.get("old_per_token_logps")
        if old is None:
            old = out["old_per_token_logps"] = self._sampling_logps(out)  # (B, T)
        mask = out["completion_mask"]  # (B, T)
        if "tool_mask" in out:
            mask = mask * out["tool_mask"]
        # AR first, then Lopti's split (docs/design.md): per-token advantages are AR's in both passes.
        adv = reweight_advantages(out["advantages"], old, self._ar_alpha)  # (B, T)
        out["advantages"] = adv
        self._log_token_prob_diagnostics(old, mask, adv)
        if self.model.training and self._lopti_eta is not None:
            for k, p in enumerate(lopti_passes(adv, old, mask, self._lopti_eta)):
                out[f"lopti_advantages_{k}"] = p.advantages  # (B, T)
                out[f"lopti_kl_mask_{k}"] = p.kl_mask  # (B, T) bool
            self._lopti_generated_at = self._step
            counts = torch.stack([out["lopti_kl_mask_0"].sum(), (mask != 0).sum()]).float()
            low, total = self.accelerator.reduce(counts, reduction="sum").tolist()
            self._metrics["train"]["lopti/low_token_fraction"].append(low / max(total, 1.0))
        return out

    def _log_token_prob_diagnostics(self, old, mask, adv) -> None:
        """The paper's Fig. 1 per generation batch, over all processes: share of response tokens
        and of gradient norm (the |Â|·(1 − π_old) bound) per π_old bucket."""
        acc = self.accelerator
        # Completions have different lengths on different processes: pad T before gathering.
        old, mask, adv = (acc.gather(acc.pad_across_processes(t, dim=1)) for t in (old, mask, adv))
        mode = "train" if self.model.training else "eval"
        for key, value in token_prob_diagnostics(old, mask != 0, adv).items():
            self._metrics[mode][key].append(value)

    @torch.no_grad()
    def _sampling_logps(self, out: dict[str, Any]) -> torch.Tensor:
        """log π_old of the completion tokens, as TRL computes `old_per_token_logps`: the model
        as it sampled (no update since), logits divided by the generation temperature."""
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)  # (B, P+T)
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)  # (B, P+T)
        batch_size = (
            self.args.per_device_train_batch_size
            if self.model.training
            else self.args.per_device_eval_batch_size
        )
        extra = {k: out[k] for k in _FORWARD_KEYS if k in out}
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, ids, attention, out["completion_ids"].size(1), batch_size, **extra
            )
        return logps  # (B, T)

    def _lopti_pass(self) -> int | None:
        """0 (low tokens) or 1 (high tokens) for the current micro-step; None outside Lopti.

        TRL replays the buffered generation batch `num_iterations` times, `steps_per_generation`
        micro-steps each; the first half of the replays is sweep 1, the second half sweep 2.
        """
        if self._lopti_eta is None or not self.model.training:
            return None
        replay = (self._step - self._lopti_generated_at) // self.args.steps_per_generation
        return 0 if replay < self.num_iterations // 2 else 1

    def _lopti_pass_inputs(self, inputs: dict[str, Any], k: int) -> dict[str, Any]:
        """The inputs of pass `k`: its advantages (zero on the other group) and, with β ≠ 0, a
        loss mask restricted to its group so that the KL term is restricted too."""
        out = dict(inputs)
        out["advantages"] = inputs[f"lopti_advantages_{k}"]
        if self.beta != 0.0:
            out["tool_mask"] = inputs[f"lopti_kl_mask_{k}"].to(inputs["completion_mask"].dtype)
        return out

    def _compute_loss(self, model, inputs):
        k = self._lopti_pass()
        if k is not None:
            inputs = self._lopti_pass_inputs(inputs, k)
        return super()._compute_loss(model, inputs)
