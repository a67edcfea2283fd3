"""pmalopti.integrations.verl on CPU: the registered AR loss, Lopti's batches, the KL-masked loss,
the two-pass trainer mixin (with an in-memory TransferQueue stand-in) and the example config.
The trainer built by verl's own constructor is in test_verl_sync_trainer.py, the authors' loss
normalisation and k3 clamp in test_verl_paper_loss.py."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")

from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, get_policy_loss_fn
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig

import pmalopti.integrations.verl as pv
from pmalopti.rl import lopti_split, policy_loss, reweight_advantages

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "verl"
B, T = 6, 7


def _actor_config(alpha=0.3, eta=0.0, **kw):
    """An FSDPActorConfig as verl's worker builds it, with our policy-loss config."""
    return FSDPActorConfig(
        strategy="fsdp", rollout_n=3, ppo_micro_batch_size_per_gpu=2,
        clip_ratio_low=0.2, clip_ratio_high=0.24, clip_ratio_c=10.0,
        policy_loss=pv.PmaloptiPolicyLossConfig(loss_mode=pv.LOSS_MODE, ar_alpha=alpha, lopti_eta=eta),
        **kw,
    )  # fmt: skip


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    resp_len = torch.tensor([7, 5, 3, 6, 7, 2])
    mask = (torch.arange(T)[None] < resp_len[:, None]).float()  # (B, T)
    old = -torch.rand(B, T, generator=g) * 3  # (B, T) π_old spans both Lopti groups
    logp = (old + torch.randn(B, T, generator=g) * 0.4).requires_grad_()  # (B, T)
    ref = old + torch.randn(B, T, generator=g) * 0.3
    adv = torch.randn(B, generator=g)[:, None].expand(B, T) * mask  # (B, T) as verl stores it
    return logp, old, ref, adv, mask, resp_len


def test_the_ar_loss_is_registered_in_verls_policy_loss_registry():
    assert get_policy_loss_fn("pmalopti_ar") is pv.compute_policy_loss_pmalopti_ar


def test_registered_ar_loss_equals_pmalopti_policy_loss_with_ar_value_and_gradient():
    logp, old, _, adv, mask, _ = _tensors()
    theirs, metrics = get_policy_loss_fn("pmalopti_ar")(
        old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask,
        loss_agg_mode="token-mean", config=_actor_config(alpha=0.3),
    )  # fmt: skip
    ours, _ = policy_loss(
        logp,
        old,
        reweight_advantages(adv, old, 0.3),
        mask,
        clip_low=0.2,
        clip_high=0.24,
        clip_c=10.0,
    )
    torch.testing.assert_close(theirs, ours)
    torch.testing.assert_close(
        torch.autograd.grad(theirs, logp)[0], torch.autograd.grad(ours, logp)[0]
    )
    assert metrics["actor/ar_alpha"] == 0.3


def test_registered_ar_loss_at_alpha_zero_is_verls_vanilla_loss_bit_for_bit():
    logp, old, _, adv, mask, _ = _tensors(1)
    cfg = _actor_config(alpha=0.0)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        ours, m1 = pv.compute_policy_loss_pmalopti_ar(old, logp, adv, mask, agg, cfg)
        vanilla, m2 = compute_policy_loss_vanilla(old, logp, adv, mask, agg, cfg)
        assert torch.equal(ours, vanilla)
        assert {k: m1[k] for k in m2} == m2


def test_ar_loss_without_our_policy_loss_config_says_how_to_set_alpha():
    logp, old, _, adv, mask, _ = _tensors()
    cfg = FSDPActorConfig(strategy="fsdp", rollout_n=3, ppo_micro_batch_size_per_gpu=2)
    with pytest.raises(ValueError, match=r"policy_loss\.ar_alpha.*PmaloptiPolicyLossConfig"):
        pv.compute_policy_loss_pmalopti_ar(old, logp, adv, mask, "token-mean", cfg)


def test_policy_loss_config_rejects_alpha_and_eta_out_of_range():
    with pytest.raises(ValueError, match="ar_alpha"):
        pv.PmaloptiPolicyLossConfig(ar_alpha=1.2)
    with pytest.raises(ValueError, match="lopti_eta"):
        pv.PmaloptiPolicyLossConfig(lopti_eta=1.0)


def _dataproto(seed=0):
    _, old, ref, adv, mask, _ = _tensors(seed)
    return DataProto.from_dict(
        tensors={
            "advantages": adv,
            "old_log_probs": old,
            "ref_log_prob": ref,
            "response_mask": mask,
        },
        non_tensors={"uid": [f"p{i // 3}" for i in range(B)]},
        meta_info={"temperature": 0.7},
    )


def test_lopti_batches_split_a_dataproto_into_low_then_high_passes():
    batch = _dataproto()
    before = {k: v.clone() for k, v in batch.batch.items()}
    first, second = pv.lopti_batches(batch, 0.5)
    low, high = lopti_split(batch.batch["old_log_probs"], batch.batch["response_mask"], 0.5)
    assert low.any() and high.any()
    assert (first.meta_info["lopti_pass"], second.meta_info["lopti_pass"]) == ("low", "high")
    assert torch.equal(first.batch[pv.KL_MASK_KEY].bool(), low)
    assert torch.equal(second.batch[pv.KL_MASK_KEY].bool(), high)
    assert (first.batch["advantages"][high] == 0).all() and (
        second.batch["advantages"][low] == 0
    ).all()
    torch.testing.assert_close(
        first.batch["advantages"] + second.batch["advantages"], batch.batch["advantages"]
    )
    # the denominators come from response_mask, which both passes share unchanged
    assert first.batch["response_mask"] is batch.batch["response_mask"]
    assert list(first.non_tensor_batch["uid"]) == list(batch.non_tensor_batch["uid"])
    for k, v in before.items():  # the input batch is not modified
        assert torch.equal(batch.batch[k], v)
    assert pv.KL_MASK_KEY not in batch.batch.keys()  # noqa: SIM118
    with pytest.raises(ValueError, match="lopti_eta"):
        pv.lopti_batches(batch, 0.0)


def _nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def _engine_data(logp, old, ref, adv, mask, resp_len, kl_mask=None):
    """(model_output, data) shaped as verl's engine hands them to the loss: nested, no padding."""
    prompt_len = torch.tensor([3, 2, 4, 3, 2, 5])
    pieces = []
    for i in range(B):
        p, r = int(prompt_len[i]), int(resp_len[i])
        pieces += [torch.zeros(p - 1), logp[i, :r], torch.zeros(1)]  # log-probs shifted by one
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), (prompt_len + resp_len).cumsum(0)])
    log_probs = torch.nested.nested_tensor_from_jagged(torch.cat(pieces), offsets=offsets)

    def resp(x):
        return _nested([x[i, : resp_len[i]] for i in range(B)])

    fields = {
        "prompts": _nested([torch.ones(int(p), dtype=torch.long) for p in prompt_len]),
        "responses": _nested([torch.ones(int(r), dtype=torch.long) for r in resp_len]),
        "response_mask": resp(mask),
        "old_log_probs": resp(old),
        "advantages": resp(adv),
        "ref_log_prob": resp(ref),
    }
    if kl_mask is not None:
        fields[pv.KL_MASK_KEY] = resp(kl_mask)
    data = TensorDict(fields, batch_size=B)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=B)
    return {"log_probs": log_probs}, data


def test_kl_masked_ppo_loss_equals_pmalopti_policy_loss_with_the_pass_kl_mask():
    logp, old, ref, _, mask, resp_len = _tensors(2)
    cfg = _actor_config(alpha=0.3, use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="low_var_kl")
    first, _ = pv.lopti_batches(_dataproto(2), 0.5)
    kl_mask = first.batch[pv.KL_MASK_KEY]
    pass_adv = first.batch["advantages"]
    out, data = _engine_data(logp, old, ref, pass_adv, mask, resp_len, kl_mask)
    theirs, metrics = pv.pmalopti_ppo_loss(cfg, out, data)
    ours, m = policy_loss(
        logp, old, reweight_advantages(pass_adv, old, 0.3), mask, clip_low=0.2, clip_high=0.24,
        clip_c=10.0, ref_logprobs=ref, kl_coef=0.1, kl_mask=kl_mask, denom=int(mask.sum()),
    )  # fmt: skip
    torch.testing.assert_close(theirs, ours)
    torch.testing.assert_close(
        torch.autograd.grad(theirs, logp)[0], torch.autograd.grad(ours, logp)[0]
    )
    assert metrics["kl_loss"].aggregate() == pytest.approx(m["actor/kl_loss"], rel=1e-5)


def test_lopti_pass_losses_in_verl_add_up_to_verls_single_pass_loss_gradient():
    from verl.workers.utils.losses import ppo_loss

    logp, old, ref, adv, mask, resp_len = _tensors(3)
    cfg = _actor_config(alpha=0.3, use_kl_loss=True, kl_loss_coef=0.05, kl_loss_type="low_var_kl")
    single, _ = ppo_loss(cfg, *_engine_data(logp, old, ref, adv, mask, resp_len))
    (expected,) = torch.autograd.grad(single, logp)
    summed = torch.zeros_like(logp)
    for p in pv.lopti_batches(_dataproto(3), 0.5):
        out, data = _engine_data(
            logp, old, ref, p.batch["advantages"], mask, resp_len, p.batch[pv.KL_MASK_KEY]
        )
        summed += torch.autograd.grad(pv.pmalopti_ppo_loss(cfg, out, data)[0], logp)[0]
    torch.testing.assert_close(summed, expected, rtol=1e-5, atol=1e-7)


def test_kl_masked_ppo_loss_without_a_kl_mask_is_verls_ppo_loss():
    from verl.workers.utils.losses import ppo_loss

    logp, old, ref, adv, mask, resp_len = _tensors(4)
    cfg = _actor_config(alpha=0.3, use_kl_loss=True, kl_loss_coef=0.1)
    a, _ = pv.pmalopti_ppo_loss(cfg, *_engine_data(logp, old, ref, adv, mask, resp_len))
    b, _ = ppo_loss(cfg, *_engine_data(logp, old, ref, adv, mask, resp_len))
    assert torch.equal(a, b)


class _FakeTransferQueue(types.ModuleType):
    """An in-memory stand-in for `transfer_queue`: one partition of nested per-sample fields."""

    def __init__(self, fields: dict):
        super().__init__("transfer_queue")
        self.fields = dict(fields)

    def kv_batch_get(self, keys, partition_id, select_fields):
        return TensorDict({f: self.fields[f] for f in select_fields}, batch_size=len(keys))

    def kv_batch_put(self, keys, partition_id, fields):
        self.fields.update(dict(fields.items()))
        return _Meta(keys)


class _Meta:
    """The parts of a TransferQueue `KVBatchMeta` the trainer touches."""

    def __init__(self, keys):
        self.keys, self.partition_id, self.extra_info = keys, "train", {}

    def __len__(self):
        return len(self.keys)


def _mixin():
    return pytest.importorskip("pmalopti.integrations.verl_trainer").LoptiTrainerMixin


class _ParentTrainer:
    """Records what verl's `_update_actor` would read from the queue on each call."""

    def __init__(self, tq):
        self.tq, self.seen = tq, []

    def _update_actor(self, batch, metrics):
        padded = TensorDict(dict(self.tq.fields), batch_size=len(batch)).to_padded_tensor()
        self.seen.append({k: padded[k].clone() for k in padded.keys()})  # noqa: SIM118
        n = float(len(self.seen))
        metrics.update({"actor/pg_loss": n, "actor/kl_loss": n / 10, "actor/grad_norm": n})
        return batch


def test_trainer_mixin_runs_update_actor_twice_low_pass_first_and_restores_advantages(monkeypatch):
    batch = _dataproto(5)
    resp_len = batch.batch["response_mask"].sum(-1).long()

    def nested(x):
        return _nested([x[i, : resp_len[i]] for i in range(B)])

    fields = {k: nested(batch.batch[k]) for k in ("response_mask", "old_log_probs", "advantages")}
    tq = _FakeTransferQueue(fields)
    monkeypatch.setitem(sys.modules, "transfer_queue", tq)

    class Trainer(_mixin(), _ParentTrainer):
        config = OmegaConf.create(
            {"actor_rollout_ref": {"actor": {"policy_loss": {"lopti_eta": 0.5}}}}
        )

    trainer = Trainer(tq)
    metrics: dict = {}
    trainer._update_actor(_Meta(list(range(B))), metrics)
    assert len(trainer.seen) == 2
    low, high = lopti_split(batch.batch["old_log_probs"], batch.batch["response_mask"], 0.5)
    adv = batch.batch["advantages"]
    for seen, part in zip(trainer.seen, (low, high), strict=True):
        torch.testing.assert_close(seen["advantages"], adv * part)
        assert torch.equal(seen[pv.KL_MASK_KEY].bool(), part)
    restored = TensorDict(dict(tq.fields), batch_size=B).to_padded_tensor()
    torch.testing.assert_close(restored["advantages"], adv)
    assert metrics["actor/lopti_low/pg_loss"] == 1.0 and metrics["actor/lopti_high/pg_loss"] == 2.0
    assert metrics["actor/pg_loss"] == 3.0  # pass objectives add up
    assert metrics["actor/kl_loss"] == pytest.approx(0.3)
    assert metrics["actor/grad_norm"] == 1.5  # not additive: averaged
    assert metrics["actor/lopti_low_token_frac"] == pytest.approx(
        float(low.sum() / high.logical_or(low).sum())
    )


def test_trainer_mixin_with_eta_zero_is_one_plain_update(monkeypatch):
    tq = _FakeTransferQueue({})
    monkeypatch.setitem(sys.modules, "transfer_queue", tq)

    class Trainer(_mixin(), _ParentTrainer):
        config = OmegaConf.create(
            {"actor_rollout_ref": {"actor": {"policy_loss": {"lopti_eta": 0}}}}
        )

    trainer = Trainer(tq)
    trainer._update_actor(_Meta([0]), {})
    assert len(trainer.seen) == 1 and trainer.seen[0] == {}


def test_example_config_composes_with_verl_and_carries_the_paper_settings():
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    overrides = [
        "data.train_files=train.parquet",
        "data.val_files=[test.parquet]",
        f"reward.custom_reward_function.path={EXAMPLES / 'kk_reward.py'}",
    ]
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        cfg = compose(config_name="grpo_kk_lopti", overrides=overrides)
    validate_config(cfg, use_reference_policy=True, use_critic=False)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor.policy_loss, pv.PmaloptiPolicyLossConfig)
    assert (actor.policy_loss.ar_alpha, actor.policy_loss.lopti_eta) == (0.3, 0.5)
    assert pv.lopti_eta_from(cfg) == 0.5
    # the authors' loss normalisation and k3 clamp (verl's own: False, 20)
    assert (actor.policy_loss.micro_token_mean, actor.policy_loss.kl_log_ratio_clamp) == (True, 5.0)
    assert (actor.use_dynamic_bsz, actor.ppo_micro_batch_size_per_gpu) == (False, 8)
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.24, 10.0)
    assert (actor.kl_loss_coef, actor.kl_loss_type, actor.loss_agg_mode) == (
        1e-3,
        "low_var_kl",
        "token-mean",
    )
    assert actor.optim.lr == 1e-6 and actor.use_kl_loss
    assert cfg.data.train_batch_size == 64
    assert (cfg.actor_rollout_ref.rollout.n, cfg.actor_rollout_ref.rollout.temperature) == (8, 0.7)
    assert cfg.trainer.v1.trainer_mode == pv.TRAINER_MODE


def test_example_kk_reward_scores_the_published_format():
    spec = importlib.util.spec_from_file_location("kk_reward", EXAMPLES / "kk_reward.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    truth = {"solution_text_format": "(1) Ada is a knight\n(2) Bo is a knave", "statements": "()"}
    good = " thinking </think><answer>(1) Ada is a knight\n(2) Bo is a knave</answer>"
    wrong = " thinking </think><answer>(1) Ada is a knave\n(2) Bo is a knave</answer>"
    assert mod.compute_score("kk_logic", good, truth)["score"] == 3.0
    assert mod.compute_score("kk_logic", good, truth)["acc"] == 1.0
    assert mod.compute_score("kk_logic", wrong, truth)["score"] == -0.5
    assert mod.compute_score("kk_logic", "no tags", truth)["score"] == -3.0
