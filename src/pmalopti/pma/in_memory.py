"""PMA merged in memory: sum_i w_i M_i as a state dict, for small models evaluated many times.

The same arithmetic as the streaming merge, bit for bit (`pma.arithmetic`: float32 running sum,
`acc += fl(w * x)` per input, rounded to the newest checkpoint's dtype at the end), on whole
tensors; the streaming `merge_checkpoints` is for checkpoints of any size.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from pmalopti.pma.arithmetic import fold
from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.streaming import check_compatible


def merged_state_dict(
    ckpts: Sequence[str | Path], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """sum_i w_i * M_i accumulated in float32, cast to the newest checkpoint's dtypes.

    `weights` are used as given (oldest first; see `MergeSpec.merge_weights`). Non-floating
    tensors are taken from the newest checkpoint and must agree across inputs.
    """
    if len(ckpts) != len(weights) or not ckpts:
        raise ValueError(f"{len(ckpts)} checkpoints but {len(weights)} weights")
    with ExitStack() as stack:
        readers = [stack.enter_context(CheckpointReader(c)) for c in ckpts]
        check_compatible(readers)
        out: dict[str, torch.Tensor] = {}
        for name, spec in readers[-1].specs.items():
            if not spec.dtype.is_floating_point:
                out[name] = readers[-1].read(name)
                for r in readers[:-1]:
                    if not torch.equal(r.read(name), out[name]):
                        raise ValueError(
                            f"non-float tensor {name} differs between checkpoints {r.path} and "
                            f"{readers[-1].path}; refusing to merge"
                        )
                continue
            acc = torch.empty(spec.shape, dtype=torch.float32)  # (shape,) running sum
            for i, (r, w) in enumerate(zip(readers, weights, strict=True)):
                x = r.read(name)  # (shape,) as stored: a fresh tensor, ours to overwrite
                fold(acc, x.float(), w, first=i == 0, scratch=True)
            out[name] = acc.to(spec.dtype.torch)
    return out
