"""The config of a training command's run: `--config`, `--set`, `--resume` and `--init-from`."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pmalopti.config import load_config

T = TypeVar("T")


def load_run_config(cls: type[T], args, run_dir: Path) -> T:
    """`--config` (or, on `--resume` without one, the run's saved config.yaml) plus `--set`
    overrides, plus `init_from` from `--init-from` (which must be a Hugging Face model folder)."""
    config_path = args.config
    if args.resume and config_path is None:
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"cannot resume: {config_path} does not exist")
    overrides = list(args.overrides)
    if args.init_from:
        if not Path(args.init_from, "config.json").is_file():
            raise FileNotFoundError(
                f"--init-from {args.init_from}: not a Hugging Face model folder"
            )
        overrides.append(f"init_from={args.init_from}")
    return load_config(cls, config_path, overrides)
