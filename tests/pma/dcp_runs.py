"""Real DCP checkpoints from a 2-rank FSDP2 model (gloo on CPU), saved in the four layouts.

Shared by tests/pma/test_dcp_*.py. `write_runs` spawns two ranks that train a tiny HF Llama
wrapped with `fully_shard` for a few AdamW steps and, after each, save what each framework saves:

- torchtitan `checkpoint/step-N/`: model keys flattened to the top, `optimizer.*`,
  `lr_scheduler.*`, `dataloader.*`, `train_state.*` beside them;
- OLMo-core `stepN/model_and_optim/` (`model.*`, `optim.*`) + `stepN/train/rankK.pt`, `config.json`;
- Megatron `iter_000000N/`: model keys at the top, `optimizer.*`, `rng_state` bytes, plus
  `common.pt` and `metadata.json`;
- accelerate (HF Trainer) `checkpoint-N/pytorch_model_fsdp_0/` (`model.*`), `optimizer_0/`,
  `trainer_state.json`, `config.json`.

Rank 0 also saves the full (gathered) weights of every step, for the float64 reference.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn

STEPS = (1, 2, 3)
LAYOUT_DIRS = {
    "torchtitan": lambda s: f"torchtitan/checkpoint/step-{s}",
    "olmo-core": lambda s: f"olmo/step{s}",
    "megatron": lambda s: f"megatron/iter_{s:07d}",
    "accelerate": lambda s: f"accelerate/checkpoint-{s}",
}
# Where the model's state sits in each layout: (DCP sub-folder, key prefix).
MODEL_AT = {
    "torchtitan": ("", ""),
    "olmo-core": ("model_and_optim", "model."),
    "megatron": ("", ""),
    "accelerate": ("pytorch_model_fsdp_0", "model."),
}
WEIGHTS = [1 / 6, 2 / 6, 3 / 6]  # WMA of three: the order matters


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.o_proj = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
        self.k_proj, self.v_proj = nn.Linear(16, 8, bias=False), nn.Linear(16, 8, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, 16)
        q = self.q_proj(h)
        k, v = self.k_proj(h).repeat(1, 1, 2), self.v_proj(h).repeat(1, 1, 2)  # (B, T, 16)
        return self.o_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(16, 24, bias=False), nn.Linear(16, 24, bias=False)
        self.down_proj = nn.Linear(24, 16, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn, self.mlp = _Attn(), _Mlp()
        self.input_layernorm, self.post_attention_layernorm = nn.RMSNorm(16), nn.RMSNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(64, 16)
        self.layers = nn.ModuleList([_Layer(), _Layer()])
        self.norm = nn.RMSNorm(16)


class TinyLM(nn.Module):
    """A 2-layer decoder whose state-dict names and shapes are those of the HF Llama of
    `hf_config()`, in plain torch so the spawned ranks need not import transformers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = _Body()
        self.lm_head = nn.Linear(16, 64, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids (B, T) -> loss
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x)
        logits = self.lm_head(self.model.norm(x))  # (B, T, 64)
        return F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))


def hf_config():
    from pmalopti.models.tiny import tiny_config

    return tiny_config(
        64, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=24,
        tie_word_embeddings=False,
    )  # fmt: skip


@contextlib.contextmanager
def process_group(rank: int, world: int, init_file: str):
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


def sharded_model(mesh):
    from torch.distributed.fsdp import fully_shard

    model = TinyLM()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _save(root: Path, step: int, model_sd, optim_sd, rank: int) -> None:
    rng = io.BytesIO(f"rng of rank {rank} at {step}".encode())
    titan = {
        **model_sd,
        "optimizer": optim_sd,
        "lr_scheduler": {"last_epoch": torch.tensor(step)},
        "dataloader": {f"dp_rank_{rank}": io.BytesIO(b"loader position")},
        "train_state": {"step": torch.tensor(step, dtype=torch.int32)},
    }
    dcp.save(titan, checkpoint_id=str(root / LAYOUT_DIRS["torchtitan"](step)))
    olmo = root / LAYOUT_DIRS["olmo-core"](step)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(olmo / "model_and_optim"))
    (olmo / "train").mkdir(exist_ok=True)
    torch.save({"global_step": step}, olmo / "train" / f"rank{rank}.pt")
    mega = root / LAYOUT_DIRS["megatron"](step)
    dcp.save({**model_sd, "optimizer": optim_sd, "rng_state": rng}, checkpoint_id=str(mega))
    acc = root / LAYOUT_DIRS["accelerate"](step)
    dcp.save({"model": model_sd}, checkpoint_id=str(acc / "pytorch_model_fsdp_0"))
    dcp.save({"optimizer": optim_sd}, checkpoint_id=str(acc / "optimizer_0"))
    if rank == 0:
        torch.save({"iteration": step}, mega / "common.pt")
        (mega / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
        (acc / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (acc / "scheduler.pt").write_bytes(b"scheduler state")


def _save_online(online, root: Path, rank: int) -> None:
    """Write the online merge both ways, recording what each rank gathered or materialised."""
    from torch.distributed.tensor import DTensor

    from pmalopti.pma import dcp_online

    facts = {"full_tensor_calls": 0, "gather_sent": [], "gather_received": []}
    real_full, real_gather = DTensor.full_tensor, dist.gather

    def full_tensor(self, *a, **k):
        facts["full_tensor_calls"] += 1
        return real_full(self, *a, **k)

    def gather(tensor, gather_list=None, *a, **k):
        facts["gather_sent"].append(tensor.numel())
        facts["gather_received"].append(sum(t.numel() for t in gather_list or []))
        return real_gather(tensor, gather_list, *a, **k)

    DTensor.full_tensor, dist.gather = full_tensor, gather
    try:
        dcp_online.save_merge_hf(online, root / "online-hf", metadata={"merge_step": 3})
        dcp_online.save_merge_dcp(online, root / "online-dcp")
    finally:
        DTensor.full_tensor, dist.gather = real_full, real_gather
    facts["local_numel"] = [t.to_local().numel() for _, t in online.tracked]
    facts["full_numel"] = [t.numel() for _, t in online.tracked]
    (root / f"online-facts-{rank}.json").write_text(json.dumps(facts))


def _worker(rank: int, root: str, init_file: str) -> None:
    """Train and save in four layouts; rank 0 merges each; both ranks load each merge back."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
    )

    from pmalopti.pma.dcp_layout import detect_all
    from pmalopti.pma.dcp_merge import merge_dcp
    from pmalopti.pma.online import OnlineAverager

    torch.set_num_threads(1)
    root_p = Path(root)
    with process_group(rank, 2, init_file) as mesh:
        model = sharded_model(mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        online = OnlineAverager(model, method="wma", n=3, interval=1, every=3)  # steps 1, 2, 3
        for step in STEPS:
            ids = torch.randint(0, 64, (2, 6), generator=g)  # (B, T), same on both ranks
            model(ids).backward()
            opt.step()
            opt.zero_grad()
            online.step(step)
            model_sd, optim_sd = get_state_dict(model, opt)
            _save(root_p, step, model_sd, optim_sd, rank)
            full = {k: v.full_tensor() for k, v in model_sd.items()}
            exp_avg = {k: v["exp_avg"].full_tensor() for k, v in optim_sd["state"].items()}
            if rank == 0:
                torch.save({"model": full, "exp_avg": exp_avg}, root_p / f"ref-{step}.pt")
        _save_online(online, root_p, rank)
        dist.barrier()
        if rank == 0:  # the merge itself needs no process group
            for layout, name in LAYOUT_DIRS.items():
                paths = [root_p / name(s) for s in STEPS]
                merge_dcp(detect_all(paths), WEIGHTS, root_p / "merged" / layout, progress=False)
        dist.barrier()
        loaded = {}
        for layout in LAYOUT_DIRS:
            fresh = sharded_model(mesh)
            sd = get_model_state_dict(fresh)
            sub, prefix = MODEL_AT[layout]
            state = {prefix.rstrip("."): sd} if prefix else sd
            dcp.load(state, checkpoint_id=str(root_p / "merged" / layout / sub))
            set_model_state_dict(fresh, sd)
            loaded[layout] = {
                "model": {k: p.detach().full_tensor() for k, p in fresh.named_parameters()},
                "placements": {k: str(p.placements) for k, p in fresh.named_parameters()},
            }
        if rank == 0:
            torch.save(loaded, root_p / "loaded.pt")


def write_runs(root: Path) -> Path:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(_worker, args=(str(root), str(root / "pg")), nprocs=2, join=True)
    cfg = hf_config()
    for s in STEPS:  # what HF Trainer / OLMo-core also keep beside the weights
        cfg.save_pretrained(root / LAYOUT_DIRS["accelerate"](s))
        cfg.save_pretrained(root / LAYOUT_DIRS["olmo-core"](s))
    return root
