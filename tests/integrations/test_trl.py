"""AR and Lopti inside TRL's GRPOTrainer, checked on a tiny local model on CPU.

What is checked through the tensors TRL actually receives (captured by wrapping
`GRPOTrainer._compute_loss` / `_generate_and_score_completions`), not through the subclass's own
bookkeeping: π_old at the sampling temperature, AR's per-token advantages, the Lopti masks of
each sweep, the number of optimizer steps, and the loss against `pmalopti.rl.policy_loss`.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import GRPOTrainer

from pmalopti.integrations.trl import LoptiGRPOConfig, LoptiGRPOTrainer
from pmalopti.models.tiny import tiny_model_and_tokenizer
from pmalopti.rl import group_advantages, policy_loss, reweight_advantages

TEMPERATURE = 0.7
ETA = 0.5
ALPHA = 0.3
G = 4  # completions per prompt


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny model saved to disk (TRL builds its KL reference model from the config's path).

    The embeddings (tied to the LM head) are scaled up so that next-token distributions are
    peaked: a random tiny model is near uniform over its vocabulary and would put every token
    below η = 0.5.
    """
    model, tok = tiny_model_and_tokenizer(
        seed=0, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1
    )
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    return path, tok


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path)


def _digit_reward(completions, **_):
    return [sum(ch.isdigit() for ch in c) / 4 for c in completions]


def _dataset(n: int = 16) -> Dataset:
    return Dataset.from_dict({"prompt": [f"{a} + 3 =" for a in range(n)]})


def _config(out, **kw) -> LoptiGRPOConfig:
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        num_generations=G,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        temperature=TEMPERATURE,
        seed=0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        bf16=False,  # GRPOConfig defaults to bf16 autocast, even on CPU
    )
    base.update(kw)
    return LoptiGRPOConfig(**base)


def _train(cls, tiny_dir, args, reward=_digit_reward, dataset=None, callbacks=None):
    path, tok = tiny_dir
    trainer = cls(
        model=_load(path),
        processing_class=tok,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset if dataset is not None else _dataset(),
        callbacks=callbacks,
    )
    trainer.train()
    return trainer


@contextlib.contextmanager
def _capture():
    """Record TRL's own view: each generation batch as TRL scored it, and every loss input."""
    gens, losses = [], []
    orig_gen = GRPOTrainer._generate_and_score_completions
    orig_loss = GRPOTrainer._compute_loss

    def gen(self, inputs):
        out = orig_gen(self, inputs)
        if self.model.training:
            gens.append({**out, "advantages": out["advantages"].clone()})
        return out

    def loss(self, model, inputs):
        losses.append((self._step, dict(inputs)))
        return orig_loss(self, model, inputs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GRPOTrainer, "_generate_and_score_completions", gen)
        mp.setattr(GRPOTrainer, "_compute_loss", loss)
        yield gens, losses


def _row_keys(batch) -> list[tuple[int, ...]]:
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    return [tuple(r.tolist()) for r in ids]


def _completion_logps(model, batch, temperature: float) -> torch.Tensor:
    """Reference log π(o_t) with a plain forward: log_softmax(logits / T) at the completion."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    t = batch["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=attn).logits[:, -t - 1 : -1]  # (B, T, V)
    logp = (logits.float() / temperature).log_softmax(-1)
    return logp.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)  # (B, T)


class _StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kw):
        self.steps += 1


# ----------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("field", "value"), [("ar_alpha", -0.1), ("ar_alpha", 1.5), ("lopti_eta", 1.0)]
)
def test_config_rejects_alpha_and_eta_out_of_range(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        _config(tmp_path, num_iterations=2, **{field: value})


@pytest.mark.parametrize(
    ("kw", "names"),
    [
        (dict(num_iterations=3), "num_iterations"),
        (dict(num_iterations=4), "num_iterations"),  # 4 = 2μ for lopti_epochs=2, not the 1 set
        (dict(gradient_accumulation_steps=2, steps_per_generation=3), "steps_per_generation"),
        (dict(entropy_coef=0.01), "entropy_coef"),
        (dict(beta=1e-3, loss_type="grpo"), "loss_type"),
        (dict(beta=1e-3, importance_sampling_level="sequence"), "importance_sampling_level"),
    ],
)
def test_lopti_config_refuses_settings_where_the_two_sweeps_are_not_exact(tmp_path, kw, names):
    with pytest.raises(ValueError, match=f"lopti_eta: .*{names}"):
        _config(tmp_path, lopti_eta=ETA, **kw)


def test_lopti_config_accepts_the_paper_settings_and_eta_zero_means_off(tmp_path):
    cfg = _config(tmp_path, lopti_eta=ETA, ar_alpha=ALPHA, num_iterations=2, beta=1e-3)
    assert cfg.lopti_enabled
    # β = 0 leaves TRL's mask alone, so every loss type stays exact.
    assert _config(tmp_path, lopti_eta=ETA, num_iterations=2, loss_type="grpo").lopti_enabled
    assert not _config(tmp_path, lopti_eta=0.0).lopti_enabled


def test_lopti_sets_trls_replays_to_two_sweeps_of_mu_epochs(tmp_path):
    # TRL's default num_iterations (1) becomes 2μ; the same value is accepted; η off leaves it.
    assert _config(tmp_path, lopti_eta=ETA).num_iterations == 2
    assert _config(tmp_path, lopti_eta=ETA, lopti_epochs=2).num_iterations == 4
    assert _config(tmp_path, lopti_eta=ETA, lopti_epochs=2, num_iterations=4).num_iterations == 4
    assert _config(tmp_path, num_iterations=3).num_iterations == 3
    assert _config(tmp_path, lopti_eta=0.0).num_iterations == 1
    with pytest.raises(ValueError, match="lopti_epochs"):
        _config(tmp_path, lopti_eta=ETA, lopti_epochs=0)


def test_config_parses_from_the_command_line_like_any_trl_config(tmp_path):
    from trl import TrlParser

    argv = ["--output_dir", str(tmp_path), "--ar_alpha", "0.3", "--lopti_eta", "0.5"]
    argv += ["--delta", "10", "--use_cpu", "--bf16", "False"]
    (cfg,) = TrlParser((LoptiGRPOConfig,)).parse_args_and_config(argv)
    assert (cfg.ar_alpha, cfg.lopti_eta, cfg.num_iterations, cfg.delta) == (0.3, 0.5, 2, 10.0)
    with pytest.raises(ValueError, match="num_iterations"):
        TrlParser((LoptiGRPOConfig,)).parse_args_and_config([*argv, "--num_iterations", "3"])


# ----------------------------------------------------------------------------------------------
# α = 0, η unset is TRL's GRPOTrainer


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_defaults_train_exactly_like_trl_grpo_trainer(tiny_dir, tmp_path):
    ref = _train(GRPOTrainer, tiny_dir, _config(tmp_path / "a"))
    ours = _train(LoptiGRPOTrainer, tiny_dir, _config(tmp_path / "b"))
    assert _losses(ours) == _losses(ref)
    p_ref, p_ours = _params(ref.model), _params(ours.model)
    assert any(not torch.equal(p_ref[k], v) for k, v in _params(_load(tiny_dir[0])).items())
    for k in p_ref:
        assert torch.equal(p_ref[k], p_ours[k]), k


class _ForcedOldLogps(LoptiGRPOTrainer):
    """Takes the AR path (separate π_old forward, (B, T) advantages) even at α = 0."""

    def _uses_old_logps(self) -> bool:
        return True


def test_alpha_zero_through_the_reweighting_path_matches_trl(tiny_dir, tmp_path):
    with _capture() as (_, ref_losses):
        ref = _train(GRPOTrainer, tiny_dir, _config(tmp_path / "a"))
    with _capture() as (_, losses):
        ours = _train(_ForcedOldLogps, tiny_dir, _config(tmp_path / "b"))
    # TRL skips π_old here (num_iterations 1, steps_per_generation == grad accumulation) ...
    assert not any("old_per_token_logps" in inp for _, inp in ref_losses)
    # ... so the subclass computed it, and the loss saw per-token advantages.
    assert all("old_per_token_logps" in inp for _, inp in losses)
    assert all(inp["advantages"].dim() == 2 for _, inp in losses)
    for a, b in zip(_losses(ref), _losses(ours), strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    p_ours = _params(ours.model)
    for k, v in _params(ref.model).items():
        torch.testing.assert_close(p_ours[k], v, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# AR


def test_ar_scales_each_token_advantage_by_its_sampling_probability(tiny_dir, tmp_path):
    rewards: list[float] = []

    def reward(completions, **kw):
        r = _digit_reward(completions)
        rewards.extend(r)
        return r

    with _capture() as (gens, losses):
        _train(
            LoptiGRPOTrainer,
            tiny_dir,
            _config(tmp_path, ar_alpha=ALPHA, max_steps=1),
            reward=reward,
        )
    (gen,), ((_, inp),) = gens, losses
    # TRL's group advantage is pmalopti's with TRL's eps (1e-4).
    expected = group_advantages(torch.tensor(rewards), G, eps=1e-4)
    torch.testing.assert_close(gen["advantages"], expected)

    # π_old is the sampling policy (the initial weights, no update yet) at temperature T.
    mask = inp["completion_mask"].bool()
    with torch.no_grad():
        ref_old = _completion_logps(_load(tiny_dir[0]), inp, TEMPERATURE)
    old = inp["old_per_token_logps"]
    torch.testing.assert_close(old[mask], ref_old[mask], rtol=1e-4, atol=1e-4)

    # The loss received Â_{i,t} = (α·π_old + 1 − α)·Â_i (rows were shuffled: match by tokens).
    adv_by_row = dict(zip(_row_keys(gen), gen["advantages"].tolist(), strict=True))
    a_i = torch.tensor([adv_by_row[k] for k in _row_keys(inp)])
    weight = ALPHA * ref_old.exp() + 1 - ALPHA
    torch.testing.assert_close(inp["advantages"][mask], (weight * a_i[:, None])[mask])
    assert not torch.allclose(inp["advantages"][mask], a_i[:, None].expand_as(mask)[mask])


# ----------------------------------------------------------------------------------------------
# Lopti

LOPTI = dict(
    ar_alpha=ALPHA,
    lopti_eta=ETA,
    beta=1e-3,
    use_bias_correction_kl=False,  # TRL's default weights the KL by the ratio; verl/the paper do not
    steps_per_generation=2,  # two minibatches (optimizer steps) per generation batch and sweep
    max_steps=8,
)


@pytest.fixture(scope="module")
def lopti_run(tiny_dir, tmp_path_factory):
    counter = _StepCounter()
    with _capture() as (gens, losses):
        trainer = _train(
            LoptiGRPOTrainer,
            tiny_dir,
            _config(tmp_path_factory.mktemp("lopti"), **LOPTI),
            callbacks=[counter],
        )
    return trainer, counter, gens, losses


def test_lopti_trains_with_alpha_and_eta_set(lopti_run, tiny_dir):
    trainer, *_ = lopti_run
    losses = _losses(trainer)
    assert len(losses) == LOPTI["max_steps"] and all(math.isfinite(x) for x in losses)
    low = [
        h["lopti/low_token_fraction"]
        for h in trainer.state.log_history
        if "lopti/low_token_fraction" in h
    ]
    assert low and all(0 < x < 1 for x in low)
    init = _params(_load(tiny_dir[0]))
    assert any(not torch.equal(init[k], v) for k, v in _params(trainer.model).items())


def test_token_prob_diagnostics_are_logged_for_each_generation_batch(lopti_run):
    trainer, _, gens, _ = lopti_run
    key = "diag/token_share/p<0.25"
    logged = [h for h in trainer.state.log_history if key in h]
    assert len(logged) == len(gens)
    for h, gen in zip(logged, gens, strict=True):
        mask = gen["completion_mask"].bool()
        p = gen["old_per_token_logps"].exp()
        assert h[key] == pytest.approx(float((mask & (p < 0.25)).sum() / mask.sum()))
        shares = [v for k, v in h.items() if k.startswith("diag/grad_share/")]
        assert len(shares) == 4 and sum(shares) == pytest.approx(1.0)


def test_lopti_makes_exactly_twice_the_optimizer_steps_per_generation_batch(lopti_run):
    trainer, counter, gens, _ = lopti_run
    minibatches = trainer.args.steps_per_generation // trainer.args.gradient_accumulation_steps
    assert counter.steps == LOPTI["max_steps"]
    assert len(gens) * 2 * minibatches == counter.steps


def _sweeps(lopti_run):
    """Per generation batch: [(sweep-1 inputs, sweep-2 inputs) per minibatch]."""
    trainer, _, gens, losses = lopti_run
    spg = trainer.args.steps_per_generation
    per_gen = 2 * spg
    assert len(losses) == len(gens) * per_gen
    out = []
    for g in range(len(gens)):
        block = [inp for _, inp in losses[g * per_gen : (g + 1) * per_gen]]
        out.append(list(zip(block[:spg], block[spg:], strict=True)))
    return out


def test_lopti_second_sweep_revisits_the_same_minibatches_with_the_same_old_logprobs(lopti_run):
    for pairs in _sweeps(lopti_run):
        for first, second in pairs:
            assert torch.equal(first["completion_ids"], second["completion_ids"])
            assert torch.equal(first["old_per_token_logps"], second["old_per_token_logps"])


def test_lopti_first_sweep_leaves_high_probability_tokens_out_of_the_loss(lopti_run):
    adv_by_row = {}  # TRL's per-sequence advantage of every generated row
    for gen in lopti_run[2]:
        adv_by_row.update(zip(_row_keys(gen), gen["advantages"].tolist(), strict=True))
    n_low = n_high = 0
    for pairs in _sweeps(lopti_run):
        for first, second in pairs:
            mask = first["completion_mask"].bool()
            low = mask & (first["old_per_token_logps"].exp() < ETA)  # recomputed here
            high = mask & ~low
            n_low, n_high = n_low + int(low.sum()), n_high + int(high.sum())
            # Sweep 1: advantages and (β ≠ 0) the loss mask, hence the KL, only on low tokens.
            assert torch.equal(first["tool_mask"].bool(), low)
            assert torch.all(first["advantages"][~low] == 0)
            # Sweep 2: exactly the complement.
            assert torch.equal(second["tool_mask"].bool(), high)
            assert torch.all(second["advantages"][~high] == 0)
            # Together they are AR's advantages (AR first, then the split).
            a_i = torch.tensor([adv_by_row[k] for k in _row_keys(first)])
            ar = reweight_advantages(a_i, first["old_per_token_logps"], ALPHA)
            both = first["advantages"] + second["advantages"]
            torch.testing.assert_close(both[mask], ar[mask])
    assert n_low > 0 and n_high > 0, "the test model must produce both kinds of tokens"


def test_lopti_sweep_losses_add_up_to_the_single_pass_and_equal_pmalopti_rl(lopti_run):
    trainer, *_ = lopti_run
    first, _ = _sweeps(lopti_run)[-1][0]
    base = {k: v for k, v in first.items() if k != "tool_mask"}
    base["advantages"] = first["lopti_advantages_0"] + first["lopti_advantages_1"]
    model = trainer.model
    model.train()

    def loss_and_grads(inputs):
        model.zero_grad()
        loss = GRPOTrainer._compute_loss(trainer, model, inputs)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return loss.detach(), grads

    single, g_single = loss_and_grads(base)
    passes = [loss_and_grads(trainer._lopti_pass_inputs(base, k)) for k in (0, 1)]
    torch.testing.assert_close(passes[0][0] + passes[1][0], single, rtol=1e-5, atol=1e-7)
    for a, b, s in zip(passes[0][1], passes[1][1], g_single, strict=True):
        torch.testing.assert_close(a + b, s, rtol=1e-4, atol=1e-7)

    # TRL's "dapo" loss of each pass is pmalopti.rl.policy_loss with token-mean aggregation over
    # the generation batch's token count per minibatch (TRL has no dual clip: c → ∞). The model
    # has moved since this batch was generated, so ratios are off 1 and some tokens are clipped.
    args = trainer.args
    denom = (
        first["num_items_in_batch"] * args.gradient_accumulation_steps / args.steps_per_generation
    )
    with torch.no_grad():
        logps = _completion_logps(model, first, TEMPERATURE)
    ratio = (logps - first["old_per_token_logps"]).exp()[first["completion_mask"].bool()]
    assert ((ratio - 1).abs() > trainer.epsilon_low).any(), "some tokens should be clipped"
    for k in (0, 1):
        ref, _ = policy_loss(
            logps,
            first["old_per_token_logps"],
            first[f"lopti_advantages_{k}"],
            first["completion_mask"],
            clip_low=trainer.epsilon_low,
            clip_high=trainer.epsilon_high,
            clip_c=1e9,
            ref_logprobs=first["ref_per_token_logps"],
            kl_coef=args.beta,
            kl_mask=first[f"lopti_kl_mask_{k}"],
            denom=denom,
        )
        torch.testing.assert_close(passes[k][0], ref, rtol=1e-4, atol=1e-6)


def test_trls_delta_is_the_papers_dual_clip(lopti_run, monkeypatch):
    """TRL's loss with delta = 10 is pmalopti.rl.policy_loss with dual clip c = 10, on tokens whose
    ratio is far above 10 with negative advantages; without delta it is the loss with c → ∞."""
    trainer, *_ = lopti_run
    first, _ = _sweeps(lopti_run)[-1][0]
    inputs = {k: v for k, v in first.items() if k != "tool_mask"}
    adv = first["lopti_advantages_0"] + first["lopti_advantages_1"]  # (B, T)
    inputs["advantages"] = adv
    old = first["old_per_token_logps"].clone()
    old[:, ::2] -= 4.0  # ratio ≈ e^4 ≈ 55 on every other token
    inputs["old_per_token_logps"] = old
    mask = first["completion_mask"]
    assert ((adv < 0) & mask.bool())[:, ::2].any(), "the dual clip needs negative advantages"
    args = trainer.args
    denom = (
        first["num_items_in_batch"] * args.gradient_accumulation_steps / args.steps_per_generation
    )
    model = trainer.model
    with torch.no_grad():
        logps = _completion_logps(model, first, TEMPERATURE)
        losses = {}
        for delta in (10.0, None):
            monkeypatch.setattr(args, "delta", delta)
            losses[delta] = GRPOTrainer._compute_loss(trainer, model, inputs)

    def ours(c):
        return policy_loss(
            logps, old, adv, mask, clip_low=trainer.epsilon_low, clip_high=trainer.epsilon_high,
            clip_c=c, ref_logprobs=first["ref_per_token_logps"], kl_coef=args.beta, denom=denom,
        )[0]  # fmt: skip

    torch.testing.assert_close(losses[10.0], ours(10.0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses[None], ours(1e9), rtol=1e-4, atol=1e-6)
    assert float(losses[None] - losses[10.0]) > 1e-3  # the clip is active on these tokens
