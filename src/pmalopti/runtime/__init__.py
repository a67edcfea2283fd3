"""Shared runtime: device, checkpoints, run log, filesystem."""
