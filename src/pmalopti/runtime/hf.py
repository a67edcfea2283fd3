"""Hugging Face model folders: load a model and its tokenizer, save them, copy weights in.

Every trainer reads and writes checkpoints through these, so a checkpoint is always a folder that
`AutoModelForCausalLM.from_pretrained`, vLLM and lm-eval load, with file modes that follow the
umask (transformers writes `model.safetensors` 0600 otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from pmalopti.runtime.fs import follow_umask, read_json
from pmalopti.runtime.inputs import check_folder, index_files, one_line

TOKENIZER_FILES = ("tokenizer*", "vocab.*", "merges.txt", "*.model")
"""Patterns of the files a tokenizer is saved as (one of them must be in a model folder)."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-file progress bars (one per checkpoint would drown a run's own)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_tokenizer(path: str | Path):
    """Load a checkpoint's tokenizer the way it was saved.

    `AutoTokenizer` replaces a generic tokenizer with the model family's own class for some model
    types (Qwen2 among them), which re-splits text differently from the tokenizer a tiny model
    was trained with. A folder whose `tokenizer_config.json` names the generic class loads as that.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(path)
    check_folder(folder)
    if folder.is_dir() and not any(any(folder.glob(p)) for p in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer files in {folder} (tokenizer.json, tokenizer_config.json, vocab.*, ...)"
        )
    cfg_file = folder / "tokenizer_config.json"
    cfg = read_json(cfg_file) if cfg_file.is_file() else {}
    cls = cfg.get("tokenizer_class") if isinstance(cfg, dict) else None
    try:
        if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(str(path))
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers' errors span lines, or blame a missing package
        raise ValueError(f"{folder}: cannot load the tokenizer ({one_line(exc)})") from None


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    hub_id: bool = False,
    **kwargs,
):
    """`AutoModelForCausalLM` from a local folder (or, with `hub_id`, a cached hub id), in
    `dtype`, on `device`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(path)
    if not (path / "config.json").is_file() and not (hub_id and not path.exists()):
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    if path.is_dir():  # symlinks and index entries must stay inside the folder
        check_folder(path)
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (path / index).is_file():
                index_files(path, index)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: we say what is wrong in one line below
    try:
        with quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, output_loading_info=True, **kwargs
            )
    except Exception as exc:  # transformers' errors span lines; one line naming the folder
        raise ValueError(f"{path}: cannot load the model ({one_line(exc)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # transformers initialises missing weights at random and carries on: refuse instead
    bad = {k: list(v) for k, v in info.items() if k.endswith(("_keys", "_msgs")) and v}
    if bad:
        what = "; ".join(f"{k.replace('_', ' ')} {v[:3]}" for k, v in bad.items())
        raise ValueError(f"{path}: the weights do not fit its config.json ({what})")
    return model.to(device)


def save_pretrained(folder: str | Path, model, tokenizer=None) -> Path:
    """`save_pretrained` of the model (safetensors) and tokenizer, with umask-following modes."""
    folder = Path(folder)
    with quiet_transformers():
        model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    follow_umask(folder)
    return folder


def tied_keys(model) -> set[str]:
    """Parameter names that alias another (e.g. `lm_head.weight` = the embeddings): saved once."""
    keys = getattr(model, "all_tied_weights_keys", None) or {}
    return set(keys)


def load_weights(model, folder: str | Path) -> None:
    """Copy a checkpoint folder's safetensors weights into `model` (same architecture).

    Only tied weights may be absent from the files; anything else missing or unexpected is an
    error naming the keys.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    weights = {k: v for f in files for k, v in load_file(str(f)).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in tied_keys(model)]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not match the model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
