"""PMA: merge checkpoints along a pre-training run (offline, streaming) and while training (online)."""

from pmalopti.merge.weights import METHODS, merge_weights, normalize_weights

__all__ = ["METHODS", "merge_weights", "normalize_weights"]

# Online averaging: imported on first use, so `import pmalopti.merge` stays light (torch, and
# transformers for the callback, load only when asked for).
_LAZY = {
    "OnlineAverager": "pmalopti.merge.online",
    "OnlineAverageConfig": "pmalopti.merge.online",
    "PMACallback": "pmalopti.merge.callback",
    # Offline streaming merge (torch loads on first use).
    "merge_checkpoints": "pmalopti.merge.streaming",
    "write_hf_checkpoint": "pmalopti.merge.writer",
    "Checkpoint": "pmalopti.merge.select",
    "checkpoints_from_paths": "pmalopti.merge.select",
    "discover_checkpoints": "pmalopti.merge.select",
    "select_checkpoints": "pmalopti.merge.select",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pmalopti.merge' has no attribute {name!r}")
