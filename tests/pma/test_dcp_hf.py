"""`--format hf` for torchtitan Llama checkpoints: names, rotary permutation, and the merge."""

from __future__ import annotations

import torch
import torch.distributed.checkpoint as dcp

from pmalopti.cli import main
from pmalopti.models.tiny import build_tiny_model, tiny_config
from pmalopti.pma.dcp_hf import interleaved_to_half, titan_to_hf_name

HEADS, KV_HEADS, HEAD_DIM, DIM = 2, 1, 8, 16


def half_to_interleaved_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half row order -> Meta/torchtitan interleaved order, by explicit indices:
    interleaved row 2j + a of a head is HF row a * d/2 + j."""
    d = w.shape[0] // n_heads
    idx = [a * (d // 2) + j for j in range(d // 2) for a in (0, 1)]
    return w.view(n_heads, d, -1)[:, idx].reshape(w.shape)


def rope_interleaved(x: torch.Tensor, pos: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Meta / torchtitan rotary: pairs (x[2j], x[2j+1]) rotated by pos * theta_j.  x: (T, d)."""
    xc = torch.view_as_complex(x.reshape(x.shape[0], -1, 2).contiguous())  # (T, d/2)
    return torch.view_as_real(xc * torch.polar(torch.ones_like(xc.real), pos[:, None] * theta))


def rope_half(x: torch.Tensor, pos: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """HF rotary (rotate_half): pairs (x[j], x[j + d/2]) rotated by pos * theta_j.  x: (T, d)."""
    ang = torch.cat([pos[:, None] * theta] * 2, dim=-1)  # (T, d)
    x1, x2 = x.chunk(2, dim=-1)
    return x * ang.cos() + torch.cat([-x2, x1], dim=-1) * ang.sin()


def test_the_q_k_permutation_turns_torchtitan_rotary_scores_into_hf_rotary_scores():
    g = torch.Generator().manual_seed(0)
    wq = torch.randn(HEADS * HEAD_DIM, DIM, generator=g, dtype=torch.float64)
    wk = torch.randn(KV_HEADS * HEAD_DIM, DIM, generator=g, dtype=torch.float64)
    x = torch.randn(5, DIM, generator=g, dtype=torch.float64)  # (T, dim)
    pos = torch.arange(5, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    k_tt = rope_interleaved((x @ wk.T), pos, theta).reshape(5, -1)  # one kv head (T, d)
    k_hf = rope_half(x @ interleaved_to_half(wk, KV_HEADS).T, pos, theta)
    q_hf_all = x @ interleaved_to_half(wq, HEADS).T  # (T, h * d)
    for h in range(HEADS):
        rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
        q_tt = rope_interleaved(x @ wq[rows].T, pos, theta).reshape(5, -1)
        q_hf = rope_half(q_hf_all[:, rows], pos, theta)
        torch.testing.assert_close(q_hf @ k_hf.T, q_tt @ k_tt.T)  # attention logits agree
    assert torch.equal(half_to_interleaved_rows(interleaved_to_half(wq, HEADS), HEADS), wq)


def hf_config():
    return tiny_config(
        64, hidden_size=DIM, num_layers=2, num_heads=HEADS, num_kv_heads=KV_HEADS,
        intermediate_size=24, tie_word_embeddings=False,
    )  # fmt: skip


def to_torchtitan(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What torchtitan's Llama saves for these weights (names and interleaved q/k rows)."""
    inverse = {}
    for k, v in hf_sd.items():
        titan = next(
            t
            for t in [
                "tok_embeddings.weight", "norm.weight", "output.weight",
                *(f"layers.{i}.{n}" for i in range(2) for n in (
                    "attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                    "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
                    "feed_forward.w3.weight", "attention_norm.weight", "ffn_norm.weight",
                )),
            ]
            if titan_to_hf_name(t) == k
        )  # fmt: skip
        if titan.endswith("wq.weight"):
            v = half_to_interleaved_rows(v, HEADS)
        elif titan.endswith("wk.weight"):
            v = half_to_interleaved_rows(v, KV_HEADS)
        inverse[titan] = v.clone()
    return inverse


def test_torchtitan_checkpoints_merge_into_a_hf_llama_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = hf_config()
    cfg.save_pretrained(tmp_path / "hf-config")
    sds, paths = [], []
    for step in (10, 20):
        sd = build_tiny_model(cfg, seed=step).state_dict()
        sds.append(sd)
        paths.append(tmp_path / "checkpoint" / f"step-{step}")
        state = {**to_torchtitan(sd), "optimizer": {"lr": torch.tensor(1.0)}}
        dcp.save(state, checkpoint_id=str(paths[-1]), no_dist=True)
    out = tmp_path / "merged-hf"
    argv = ["merge", *map(str, paths), "--format", "hf", "--hf-config", str(tmp_path / "hf-config")]
    assert main([*argv, "--weights", "1,3", "-o", str(out), "--no-progress"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    for k, p in model.state_dict().items():
        ref = 0.25 * sds[0][k].double() + 0.75 * sds[1][k].double()
        torch.testing.assert_close(p.double(), ref, rtol=1e-6, atol=1e-7)
