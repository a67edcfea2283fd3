"""The "pmalopti_lopti" trainer mode is verl's sync trainer: built by verl's own constructor and
`init()` from the example config, with only the Ray worker groups, LLM servers, reward loop,
weight-sync manager and TransferQueue's storage calls stubbed."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest

pytest.importorskip("verl")
tq = pytest.importorskip("transfer_queue", reason="verl's v1 trainer needs transfer_queue")
trainer_base = pytest.importorskip("verl.trainer.ppo.v1.trainer_base")

from hydra import compose, initialize_config_dir  # noqa: E402
from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls  # noqa: E402
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer  # noqa: E402

import pmalopti.integrations.verl as pv  # noqa: E402
from pmalopti.integrations.verl_trainer import LoptiPPOTrainerSync  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "verl"
PROMPTS = 16


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    """A tiny local model folder and K&K parquet files in the published layout."""
    from pmalopti.models.tiny import tiny_model_and_tokenizer
    from pmalopti.tasks.kk import generate_records, write_puzzles

    root = tmp_path_factory.mktemp("verl_inputs")
    model, tok = tiny_model_and_tokenizer(seed=0, hidden_size=32, num_layers=1, num_heads=2)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    write_puzzles(generate_records(PROMPTS, split="train", people=3), root / "train.parquet")
    write_puzzles(generate_records(4, split="test", people=3), root / "test.parquet")
    return root


def _config(root: Path, out: Path, *extra: str):
    overrides = [
        f"data.train_files={root / 'train.parquet'}",
        f"data.val_files=[{root / 'test.parquet'}]",
        f"actor_rollout_ref.model.path={root / 'model'}",
        f"reward.custom_reward_function.path={EXAMPLES / 'kk_reward.py'}",
        f"trainer.default_local_dir={out}",
        "data.train_batch_size=8",
        "data.dataloader_num_workers=0",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "trainer.device=cpu",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        return compose(config_name="grpo_kk_lopti", overrides=overrides)


class _Recorder:
    """Records calls by name; used for worker groups, server managers and TransferQueue."""

    def __init__(self, name: str, calls: list):
        self._name, self._calls = name, calls

    def __getattr__(self, attr):
        def call(*args, **kwargs):
            self._calls.append((f"{self._name}.{attr}", args, kwargs))
            return {} if attr != "get_replicas" else []

        return call


@pytest.fixture
def stubbed(monkeypatch):
    """Stub what needs GPUs, Ray or servers; everything else is verl's own code."""
    calls: list = []

    class WorkerGroup:
        def __init__(self, resource_pool, ray_cls_with_init, **kw):
            self.roles = ()

        def spawn(self, prefix_set):
            return {role: _Recorder(role, calls) for role in prefix_set}

    class Manager:
        @staticmethod
        def create(**kw):
            return _Recorder("llm_server_manager", calls)

    monkeypatch.setattr(trainer_base, "RayWorkerGroup", WorkerGroup)
    monkeypatch.setattr(trainer_base, "create_colocated_worker_cls", lambda class_dict: None)

    def create_resource_pool(self):  # Ray placement groups in verl; here one named pool
        self.resource_pool_dict = {name: name for name in self.resource_pool_spec}

    monkeypatch.setattr(
        trainer_base.ResourcePoolManager, "create_resource_pool", create_resource_pool
    )
    monkeypatch.setattr(
        trainer_base.ResourcePoolManager, "get_resource_pool", lambda self, role: "global_pool"
    )
    monkeypatch.setattr(
        trainer_base, "RewardLoopManager", lambda **kw: _Recorder("reward_loop", calls)
    )
    monkeypatch.setattr(trainer_base, "LLMServerManager", Manager)
    monkeypatch.setattr(
        trainer_base, "CheckpointEngineManager", lambda **kw: _Recorder("ckpt_engine", calls)
    )
    for fn in ("kv_batch_put", "kv_list", "save_checkpoint", "load_checkpoint", "kv_clear"):
        monkeypatch.setattr(tq, fn, getattr(_Recorder("tq", calls), fn))
    return calls


def _build(cfg):
    trainer = get_trainer_cls(cfg.trainer.v1.trainer_mode)(config=cfg)
    trainer.init()
    return trainer


def _names(calls):
    return [c[0] for c in calls]


def test_lopti_trainer_is_built_on_verls_sync_paths(run_inputs, tmp_path, stubbed):
    cfg = _config(run_inputs, tmp_path / "ckpt")
    assert cfg.trainer.v1.trainer_mode == pv.TRAINER_MODE
    trainer = _build(cfg)
    assert type(trainer) is LoptiPPOTrainerSync and isinstance(trainer, PPOTrainerSync)
    assert trainer.trainer_mode == "sync"
    assert cfg.trainer.v1.trainer_mode == pv.TRAINER_MODE  # the logged config still says so
    # the sync replay buffer, filled with whole train batches (async modes fetch 1 prompt at a time)
    assert type(trainer.replay_buffer) is ReplayBuffer
    assert trainer.replay_buffer.gen_batch_size == cfg.data.train_batch_size == 8
    assert cfg.data.get("gen_batch_size") in (None, 8)
    assert trainer.train_dataloader.batch_size == 8
    # the engine loss is ours, with the actor config verl built
    (set_loss,) = [c for c in stubbed if c[0].endswith(".set_loss_fn")]
    loss_fn = set_loss[1][0]
    assert isinstance(loss_fn, partial) and loss_fn.func is pv.pmalopti_ppo_loss
    assert loss_fn.keywords["config"].policy_loss.micro_token_mean is True


def test_lopti_trainer_sends_prompts_to_transfer_queue_as_the_sync_trainer_does(
    run_inputs, tmp_path, stubbed
):
    trainer = _build(_config(run_inputs, tmp_path / "ckpt"))
    trainer.agent_loop_manager = _Recorder("agent_loop", stubbed)
    trainer.global_steps = 1
    stubbed.clear()
    trainer._add_batch_to_generate()
    (put,) = [c for c in stubbed if c[0] == "tq.kv_batch_put"]
    assert len(put[2]["keys"]) == 8
    assert "fields" not in put[2]  # async modes also store the prompts for their checkpoints
    assert _names(stubbed) == ["tq.kv_batch_put", "agent_loop.generate_sequences"]


def test_lopti_trainer_checkpoints_and_resumes_as_the_sync_trainer(run_inputs, tmp_path, stubbed):
    out = tmp_path / "ckpt"
    trainer = _build(_config(run_inputs, out))
    trainer.global_steps = 3
    stubbed.clear()
    trainer._save_checkpoint()
    step = out / "global_step_3"
    assert sorted(os.listdir(step)) == ["data.pt"]  # no transfer_queue/ snapshot (async modes)
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "3"
    assert "tq.save_checkpoint" not in _names(stubbed)
    (save,) = [c for c in stubbed if c[0].endswith(".save_checkpoint")]
    assert save[1][0] == str(step / "actor")

    stubbed.clear()
    resumed = _build(_config(run_inputs, out))  # resume_mode auto: finds global_step_3
    assert resumed.global_steps == 3
    (load,) = [c for c in stubbed if c[0].endswith(".load_checkpoint")]
    assert load[0] != "tq.load_checkpoint" and load[2]["local_path"] == str(step / "actor")
    assert resumed._reissue_inflight_prompts() == 0


def test_lopti_trainer_and_verls_sync_trainer_build_the_same_data_paths(
    run_inputs, tmp_path, stubbed
):
    ours = _build(_config(run_inputs, tmp_path / "a"))
    theirs = _build(_config(run_inputs, tmp_path / "b", "trainer.v1.trainer_mode=sync"))
    assert type(theirs) is PPOTrainerSync
    for attr in ("train_batch_size", "gen_batch_size", "max_inflight_gen_batches"):
        assert getattr(ours.replay_buffer, attr) == getattr(theirs.replay_buffer, attr)
    assert type(ours.replay_buffer) is type(theirs.replay_buffer)
    assert ours.train_dataloader.batch_size == theirs.train_dataloader.batch_size
    assert ours.total_training_steps == theirs.total_training_steps
    assert ours.parameter_sync_step == theirs.parameter_sync_step == 1
    # Lopti steps the LR scheduler once per pass: the schedule's horizon covers both
    horizon = theirs.config.actor_rollout_ref.actor.optim.total_training_steps
    assert horizon == theirs.total_training_steps
    assert ours.config.actor_rollout_ref.actor.optim.total_training_steps == 2 * horizon
    batch_a = next(iter(ours.train_dataloader))
    batch_b = next(iter(theirs.train_dataloader))
    assert list(batch_a["index"]) == list(batch_b["index"])  # same prompts, same order


def test_lopti_trainer_refuses_the_authors_normalisation_with_dynamic_micro_batches(
    run_inputs, tmp_path, stubbed
):
    cfg = _config(run_inputs, tmp_path / "c", "actor_rollout_ref.actor.use_dynamic_bsz=true")
    with pytest.raises(ValueError, match="use_dynamic_bsz"):
        get_trainer_cls(cfg.trainer.v1.trainer_mode)(config=cfg)


def test_lopti_trainer_runs_verls_own_update_actor_once_per_pass(
    run_inputs, tmp_path, stubbed, monkeypatch
):
    """verl's `PPOTrainer._update_actor` runs twice (low pass first) on the constructed trainer;
    TransferQueue is an in-memory dict of nested per-sample fields."""
    import torch
    from tensordict import TensorDict
    from transfer_queue import KVBatchMeta

    from pmalopti.rl import lopti_split

    g = torch.Generator().manual_seed(6)
    n, width = 6, 7
    lens = torch.tensor([7, 5, 3, 6, 7, 2])
    mask = (torch.arange(width)[None] < lens[:, None]).float()  # (B, T)
    old = -torch.rand(n, width, generator=g) * 3  # (B, T)
    adv = torch.randn(n, generator=g)[:, None].expand(n, width) * mask  # (B, T)

    def nested(x):
        return torch.nested.as_nested_tensor(
            [x[i, : lens[i]] for i in range(n)], layout=torch.jagged
        )

    store = {"response_mask": nested(mask), "old_log_probs": nested(old), "advantages": nested(adv)}

    def kv_batch_get(keys, partition_id, select_fields):
        return TensorDict({f: store[f] for f in select_fields}, batch_size=len(keys))

    def kv_batch_put(keys, partition_id, fields=None, **kw):
        store.update(dict(fields.items()))
        return KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id=partition_id)

    monkeypatch.setattr(tq, "kv_batch_get", kv_batch_get)
    monkeypatch.setattr(tq, "kv_batch_put", kv_batch_put)
    trainer = _build(_config(run_inputs, tmp_path / "u", "actor_rollout_ref.rollout.n=3"))
    seen = []

    class ActorGroup:
        def update_actor(self, meta):
            padded = TensorDict(dict(store), batch_size=n).to_padded_tensor()
            seen.append((dict(meta.extra_info), padded["advantages"].clone()))
            return {"metrics": {"actor/pg_loss": [0.5], "mfu": [0.1], "actor/grad_norm": [2.0]}}

    trainer.actor_rollout_wg = ActorGroup()
    metrics: dict = {}
    keys = [str(i) for i in range(n)]
    trainer._update_actor(KVBatchMeta(keys=keys, tags=[{}] * n, partition_id="train"), metrics)
    assert len(seen) == 2 and seen[0][0]["mini_batch_size"] == 4 * 3
    low, high = lopti_split(old, mask, 0.5)
    torch.testing.assert_close(seen[0][1], adv * low)
    torch.testing.assert_close(seen[1][1], adv * high)
    restored = TensorDict(dict(store), batch_size=n).to_padded_tensor()
    torch.testing.assert_close(restored["advantages"], adv)
    assert metrics["actor/pg_loss"] == 1.0 and metrics["actor/grad_norm"] == 2.0
