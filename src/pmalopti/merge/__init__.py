"""PMA: merge checkpoints along a pre-training run (offline, streaming) and while training (online)."""

from pmalopti.merge.weights import METHODS, merge_weights, normalize_weights

__all__ = ["METHODS", "merge_weights", "normalize_weights"]
