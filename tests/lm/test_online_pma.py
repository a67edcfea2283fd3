"""`pmalopti pretrain` averages online from its config's `online_pma` section, and the online
merge equals the offline merge of the same saved snapshots."""

import json

import pytest
import torch

from pmalopti.cli import main
from pmalopti.config import load_config
from pmalopti.lm.online_pma import OnlinePMAConfig
from pmalopti.lm.pretrain import PretrainConfig, pretrain
from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.spec import MergeSpec
from pmalopti.pma.streaming import merge_checkpoints

TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.vocab_size=300",
    "data.num_docs=100",
    "data.block_size=32",
    "data.max_val_blocks=2",
    "train.steps=8",
    "train.batch_size=2",
    "train.save_every=2",
    "train.eval_every=0",
    "train.progress=false",
    "schedule.warmup_steps=2",
    "schedule.decay_steps=0",
    "report.enabled=false",
    "online_pma.enabled=true",
    "online_pma.methods=[sma, 'ema:0.5']",
    "online_pma.n=3",
    "online_pma.save_steps=[8]",
]


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("online") / "run"
    pretrain(load_config(PretrainConfig, None, TINY), run)
    return run


def read_all(folder):
    with CheckpointReader(folder) as r:
        return {n: r.read(n) for n in r.specs}


def test_merges_complete_at_every_snapshot_once_the_window_fills_after_warmup(online_run):
    rows = [json.loads(x) for x in (online_run / "online_pma.jsonl").read_text().splitlines()]
    # Snapshots every save_every=2 steps from the warmup's end (2): windows of 3 end at 6 and 8.
    assert [(r["step"], r["method"]) for r in rows] == [
        (6, "sma"),
        (6, "ema:0.5"),
        (8, "sma"),
        (8, "ema:0.5"),
    ]
    assert all(r["val_loss"] > 0 for r in rows)


@pytest.mark.parametrize("method", ["sma", "ema:0.5"])
def test_the_online_merge_equals_the_offline_merge_of_the_same_checkpoints(
    online_run, tmp_path, method
):
    online = read_all(online_run / "online_pma" / f"{method.replace(':', '')}-step8")
    ckpts = [online_run / f"checkpoint-{s}" for s in (4, 6, 8)]
    weights = MergeSpec.parse(method).merge_weights(3)
    offline = read_all(merge_checkpoints(ckpts, weights, tmp_path / "off", progress=False))
    assert online.keys() <= offline.keys() and len(online) > 0
    for k, v in online.items():
        assert torch.equal(v, offline[k]), k
    meta = json.loads(
        (
            online_run / "online_pma" / f"{method.replace(':', '')}-step8" / "pmalopti_merge.json"
        ).read_text()
    )
    assert meta["steps"] == [4, 6, 8] and meta["weights"] == pytest.approx(weights)


def test_the_section_is_validated_where_it_is_declared(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"online_pma\.methods: 'ema'"):
        OnlinePMAConfig(methods=["ema"])
    argv = ["pretrain", "-o", str(tmp_path / "r"), "--set", "online_pma.n=0"]
    assert main(argv) == 2
    assert "online_pma.n must be >= 1" in capsys.readouterr().err
