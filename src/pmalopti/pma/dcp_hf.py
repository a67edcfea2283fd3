"""`--format hf`: a DCP merge written as a Hugging Face safetensors folder, where keys map.

Two mappings are known, both checked against the HF model that the config describes (every
mapped name and shape must be one of its tensors, and every tensor of it must be mapped, bar a
tied `lm_head.weight`):

- identity: the DCP model keys, less the layout's `model.` prefix (accelerate, OLMo-core,
  generic), already are the HF model's names (HF Trainer / accelerate FSDP runs of HF models);
- torchtitan Llama -> HF Llama: `tok_embeddings` -> `model.embed_tokens`, `layers.i.attention.wq`
  -> `model.layers.i.self_attn.q_proj`, `feed_forward.w1/w2/w3` -> `mlp.gate/down/up_proj`,
  `attention_norm` / `ffn_norm` -> `input_layernorm` / `post_attention_layernorm`, `norm` ->
  `model.norm`, `output` -> `lm_head`; `wq` and `wk` rows are permuted per head from torchtitan's
  interleaved rotary pairs to HF's rotate-half layout (as HF's Llama conversion script does).

Anything else (OLMo-core's or Megatron's own names) is refused: write DCP (the default) and use the
framework's converter. The HF config and tokenizer come from `--hf-config DIR`, else from the
newest checkpoint folder. Memory: one whole tensor (float32) at a time, not one chunk.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata

from pmalopti.pma.dcp_layout import DcpCheckpoint, Layout
from pmalopti.pma.dcp_merge import Plan, average_region, cast_checked
from pmalopti.pma.dcp_read import DcpSource
from pmalopti.pma.safetensors_format import TensorSpec, dtype_of
from pmalopti.pma.writer import ShardedWriter, copy_model_files

_TITAN_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TITAN_TOP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def titan_to_hf_name(key: str) -> str | None:
    """The HF Llama name of a torchtitan Llama key, or None."""
    if key in _TITAN_TOP:
        return _TITAN_TOP[key]
    m = _LAYER.match(key)
    if m and m.group(2) in _TITAN_LAYER:
        return f"model.layers.{m.group(1)}.{_TITAN_LAYER[m.group(2)]}"
    return None


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection, per head, from interleaved rotary pairs (x0,x1),(x2,x3)... to
    HF's rotate-half order (x0,x2,...,x1,x3,...).  w: (n_heads * head_dim, in_features)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _hf_model_specs(config_dir: Path) -> tuple[dict[str, tuple[int, ...]], Any]:
    """The HF model's tensor names and shapes, built on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, cfg


class HfTarget:
    """How the model keys of a DCP merge become a HF folder (or a ValueError saying why not)."""

    def __init__(
        self, newest: DcpCheckpoint, plan: Plan, source: DcpSource, hf_config: str | Path | None
    ) -> None:
        self.config_dir = Path(hf_config) if hf_config else newest.path
        if not (self.config_dir / "config.json").is_file():
            raise ValueError(
                f"--format hf needs the model's HF config.json: none in {self.config_dir}; "
                "pass --hf-config DIR"
            )
        want, cfg = _hf_model_specs(self.config_dir)
        keys = [k for k in plan.model if isinstance(source.entries[k], TensorStorageMetadata)]
        self.transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        names = self._identity(newest.layout, keys, want)
        self.mapping = "identity"
        if names is None and newest.layout in (Layout.TORCHTITAN, Layout.DCP):
            names = self._titan(keys, want, cfg)
            self.mapping = "torchtitan llama -> HF Llama"
        if names is None:
            raise ValueError(
                f"no known mapping from {newest.layout} keys (e.g. {keys[0]!r}) to the HF model "
                f"of {self.config_dir / 'config.json'} ({cfg.model_type}); write DCP (the default) "
                "and convert it with the framework's own converter"
            )
        self.names = names  # dcp key -> hf name
        self.shapes = {k: tuple(source.tensor(k).size) for k in names}
        _check_against(names, self.shapes, want, cfg, self.config_dir)

    @staticmethod
    def _identity(layout: Layout, keys: Sequence[str], want: dict) -> dict[str, str] | None:
        for strip in ("", "model."):
            if all(k.startswith(strip) for k in keys):
                names = {k: k[len(strip) :] for k in keys}
                if all(n in want for n in names.values()):
                    return names
        return None

    def _titan(self, keys: Sequence[str], want: dict, cfg: Any) -> dict[str, str] | None:
        names = {k: titan_to_hf_name(k) for k in keys}
        if any(n is None or n not in want for n in names.values()):
            return None
        n_heads = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        for k in keys:
            if k.endswith("attention.wq.weight"):
                self.transforms[k] = lambda w, h=n_heads: interleaved_to_half(w, h)
            elif k.endswith("attention.wk.weight"):
                self.transforms[k] = lambda w, h=n_kv: interleaved_to_half(w, h)
        return names  # type: ignore[return-value]

    def write(
        self,
        sources: list[DcpSource],
        ws: list[float],
        out: Path,
        *,
        dtype: torch.dtype | None,
        shard_size: int,
    ) -> dict[str, Any]:
        """Average each mapped tensor whole, transform, cast, and append it to the shards."""
        t0 = time.perf_counter()
        newest = sources[-1]
        specs = []
        for k, name in self.names.items():
            stored = newest.tensor(k).properties.dtype
            out_dtype = dtype if dtype is not None and stored.is_floating_point else stored
            specs.append(TensorSpec(name, self.shapes[k], dtype_of(out_dtype)))
        writer = ShardedWriter(out, specs, shard_size)
        for k, spec in zip(self.names, specs, strict=True):
            shape = self.shapes[k]
            whole = ChunkStorageMetadata(torch.Size([0] * len(shape)), torch.Size(shape))
            if spec.dtype.is_floating_point:
                t = average_region(sources, ws, k, whole)
            else:
                t = newest.read(k, whole, torch.empty(shape, dtype=spec.dtype.torch))
            t = self.transforms.get(k, lambda x: x)(t)
            writer.write(
                spec.name, cast_checked(t, spec.dtype.torch, k) if t.is_floating_point() else t
            )
        writer.close()
        copy_model_files(self.config_dir, out, dtype=dtype)
        return {
            "tensors": len(specs),
            "bytes_written": sum(s.nbytes for s in specs),
            "seconds": round(time.perf_counter() - t0, 3),
        }


def _check_against(
    names: dict[str, str],
    shapes: dict[str, tuple[int, ...]],
    want: dict[str, tuple[int, ...]],
    cfg: Any,
    config_dir: Path,
) -> None:
    for k, name in names.items():
        if want[name] != shapes[k]:
            raise ValueError(
                f"tensor {k!r} -> {name!r}: shape {list(shapes[k])} in the checkpoint but "
                f"{list(want[name])} in the HF model of {config_dir / 'config.json'}"
            )
    missing = sorted(set(want) - set(names.values()))
    if getattr(cfg, "tie_word_embeddings", False):
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing:
        raise ValueError(
            f"the HF model of {config_dir / 'config.json'} has tensor {missing[0]!r} that no "
            f"checkpoint key maps to"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
