"""Training text: a built-in corpus generated locally or the user's files, packed into blocks.

Nothing is downloaded. Documents are split into train/validation *before* packing, so no
validation text leaks into a training block. The batch drawn at step `s` is a pure function of
`(seed, s)`, which is what makes `--resume` reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch

BUILTIN = ("grammar", "arithmetic", "kk")

# --- built-in corpora --------------------------------------------------------------------------

_NOUNS = ["knight", "knave", "king", "queen", "guard", "liar", "sage", "child", "farmer", "bird"]
_ADJS = ["old", "young", "honest", "quiet", "clever", "tired", "brave", "small"]
_VERBS = ["sees", "trusts", "follows", "asks", "helps", "doubts", "knows", "calls"]
_PREPS = ["near", "behind", "with", "beside"]
_NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana"]


def _noun_phrase(rng: random.Random) -> str:
    words = [rng.choice(["the", "a", "every", "no"])]
    if rng.random() < 0.4:
        words.append(rng.choice(_ADJS))
    words.append(rng.choice(_NOUNS))
    if rng.random() < 0.2:
        words += [rng.choice(_PREPS), "the", rng.choice(_NOUNS)]
    return " ".join(words)


def grammar_document(rng: random.Random) -> str:
    """A few sentences from a small probabilistic grammar with long-range agreement.

    Half of each document is free choice (irreducible entropy), half is determined by earlier text
    (a named speaker is repeated, statements are echoed as "so X is a knight"), so a tiny model
    keeps improving for thousands of steps while the loss stays noisy under a constant LR.
    """
    lines = []
    for _ in range(rng.randint(2, 4)):
        name = rng.choice(_NAMES)
        role = rng.choice(["knight", "knave"])
        lines.append(f"{name} says: {_noun_phrase(rng)} {rng.choice(_VERBS)} {_noun_phrase(rng)}.")
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        lines.append(f"{name} is a {role}, so {name} counts {a} + {b} = {a + b}.")
    return "\n".join(lines)


def builtin_texts(name: str, n: int, seed: int) -> list[str]:
    """`n` documents of the built-in corpus `name` ("grammar", "arithmetic" or "kk").

    "arithmetic" and "kk" are the task's prompt followed by its reference solution (the tasks
    package), so a model pre-trained on them already knows the answer format SFT and GRPO use.
    """
    if name == "grammar":
        rng = random.Random(seed)
        return [grammar_document(rng) for _ in range(n)]
    if name in ("arithmetic", "kk"):
        try:
            from pmalopti.tasks import get_task
        except ImportError as exc:  # the tasks package is a sibling area; say what is missing
            raise ValueError(f"built-in corpus {name!r} needs pmalopti.tasks ({exc})") from None
        task = get_task(name)
        samples = task.samples("train", n=n, seed=seed)
        return [task.prompt(s) + task.target(s) for s in samples]
    raise ValueError(
        f"data.builtin: {name!r} is not a built-in corpus; choose one of {list(BUILTIN)}"
    )


# --- user files --------------------------------------------------------------------------------


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents from a .txt (blank-line separated), .jsonl, .parquet file or a `datasets` folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        if path.is_dir():
            texts = _read_datasets_dir(path, text_field)
        elif path.suffix == ".jsonl":
            texts = []
            with path.open(encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        texts.append(_field(json.loads(line), text_field, f"{path}:{i}"))
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if text_field not in table.column_names:
                raise ValueError(
                    f"{path}: no column {text_field!r}; columns are {table.column_names} "
                    "(choose one with --text-field / data.text_field)"
                )
            texts = [str(t) for t in table.column(text_field).to_pylist() if t]
        elif path.suffix in (".txt", ".md", ""):
            raw = path.read_text(encoding="utf-8")
            texts = [p.strip() for p in raw.split("\n\n") if p.strip()]
        else:
            raise ValueError(
                f"{path}: unsupported data file type {path.suffix!r}; use .txt, .jsonl or .parquet"
            )
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise ValueError(f"cannot read data file {path}: {exc}") from None
    except RecursionError:
        raise ValueError(f"cannot read data file {path}: JSON nested too deep") from None
    except Exception as exc:
        if type(exc).__name__ in ("ArrowInvalid", "ArrowIOError"):
            raise ValueError(f"cannot read data file {path}: {exc}") from None
        raise
    if not texts:
        raise ValueError(f"data file {path} contains no text")
    return texts


def _field(row: object, field: str, where: str) -> str:
    if not isinstance(row, dict) or field not in row:
        raise ValueError(
            f"{where}: no field {field!r} in this JSON line (choose one with --text-field / data.text_field)"
        )
    return str(row[field])


def _read_datasets_dir(path: Path, text_field: str) -> list[str]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise ValueError(
            f"{path} is a folder; reading a saved Hugging Face dataset needs `datasets` "
            "(pip install 'pmalopti[trl]')"
        ) from None
    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise ValueError(f"{path} is not a dataset saved with save_to_disk: {exc}") from None
    if hasattr(ds, "keys"):  # a DatasetDict: take "train" or the first split
        ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
    if text_field not in ds.column_names:
        raise ValueError(f"{path}: no column {text_field!r}; columns are {ds.column_names}")
    return [str(t) for t in ds[text_field] if t]


# --- splitting, packing, batching --------------------------------------------------------------


def split_texts(
    texts: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """A seeded document-level split; the validation part has at least one document."""
    if len(texts) < 2:
        raise ValueError(
            f"need at least 2 documents to hold out a validation split, got {len(texts)}"
        )
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_fraction * len(texts))), len(texts) - 1)
    val = [texts[i] for i in sorted(order[:n_val])]
    train = [texts[i] for i in sorted(order[n_val:])]
    return train, val


def pack_blocks(token_lists: Sequence[Sequence[int]], block_size: int, eos_id: int) -> torch.Tensor:
    """Concatenate documents, each followed by EOS, and cut into full blocks.  -> (N, block_size)

    The tail shorter than one block is dropped (standard packing, as in HF `group_texts`).
    """
    flat: list[int] = []
    for ids in token_lists:
        flat.extend(ids)
        flat.append(eos_id)
    n = len(flat) // block_size
    if n == 0:
        raise ValueError(
            f"only {len(flat)} tokens: not enough for one block of {block_size}; "
            "add data or lower the block size"
        )
    return torch.tensor(flat[: n * block_size], dtype=torch.long).view(n, block_size)


def tokenize_blocks(texts: Sequence[str], tokenizer, block_size: int) -> torch.Tensor:
    """Tokenize without special tokens and pack.  -> (N, block_size)"""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return pack_blocks(ids, block_size, tokenizer.eos_token_id)


def batch_indices(step: int, batch_size: int, n_items: int, seed: int) -> list[int]:
    """Indices of the examples in batch `step` (0-based): a fresh seeded permutation per epoch.

    A pure function of its arguments, so a resumed run draws exactly the batches it would have.
    """
    if n_items < 1:
        raise ValueError("no training examples")
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n_items)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_items, generator=g)
        take = min(batch_size - len(out), n_items - offset)
        out.extend(perm[offset : offset + take].tolist())
        pos += take
    return out


def lm_batch(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """A causal-LM batch from packed blocks: every token is a target.  blocks: (B, T)"""
    return {
        "input_ids": blocks,
        "attention_mask": torch.ones_like(blocks),
        "labels": blocks.clone(),
    }
