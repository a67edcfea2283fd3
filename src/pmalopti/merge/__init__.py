"""PMA: merge checkpoints along a pre-training run (offline, streaming) and while training (online)."""

from pmalopti.merge.weights import METHODS, merge_weights, normalize_weights

__all__ = ["METHODS", "merge_weights", "normalize_weights"]

# Online averaging: imported on first use, so `import pmalopti.merge` stays light (torch, and
# transformers for the callback, load only when asked for).
_LAZY = {
    "OnlineAverager": "pmalopti.merge.online",
    "OnlineAverageConfig": "pmalopti.merge.online",
    "PMACallback": "pmalopti.merge.callback",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pmalopti.merge' has no attribute {name!r}")
