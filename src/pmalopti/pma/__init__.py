"""PMA: merge checkpoints along a pre-training run (offline, streaming) and while training (online)."""

from pmalopti.pma.spec import MergeSpec
from pmalopti.pma.weights import METHODS, merge_weights, normalize_weights

__all__ = ["METHODS", "MergeSpec", "merge_weights", "normalize_weights"]

# Online averaging: imported on first use, so `import pmalopti.pma` stays light (torch loads only
# when asked for). The HF Trainer callback lives in pmalopti.integrations.hf_trainer (pma never
# imports integrations: docs/design.md).
_LAZY = {
    "OnlineAverager": "pmalopti.pma.online",
    "OnlineAverageConfig": "pmalopti.pma.online",
    # Offline streaming merge (numpy; torch only for .bin inputs).
    "merge_checkpoints": "pmalopti.pma.streaming",
    "write_hf_checkpoint": "pmalopti.pma.writer",
    "Checkpoint": "pmalopti.pma.select",
    "checkpoints_from_paths": "pmalopti.pma.select",
    "discover_checkpoints": "pmalopti.pma.select",
    "select_checkpoints": "pmalopti.pma.select",
    "merged_state_dict": "pmalopti.pma.in_memory",
    "find_spike": "pmalopti.pma.spike",
    "until_before_spike": "pmalopti.pma.spike",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pmalopti.pma' has no attribute {name!r}")
