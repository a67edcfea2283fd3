"""The config of a training command's run, the same for pretrain, sft and grpo.

`--config FILE` and `--set KEY=VALUE` build the config; `--init-from CKPT` sets its init field;
`--resume` starts from the run's saved `config.yaml` (unless `--config` is given) and refuses a
config that differs from the saved one outside the sections that may change on a resume.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from pmalopti.config import ConfigError, defaults, load_config, to_dict

T = TypeVar("T")

RESUMABLE = ("train",)
"""config sections that may change when a run is resumed (how long, how often to log/save)"""


def check_same_experiment(saved, now, *, allowed: Iterable[str] = RESUMABLE) -> None:
    """Refuse resuming with a config that differs from the saved one outside `allowed`."""
    a, b = to_dict(saved), to_dict(now)
    allowed = set(allowed)
    diffs = [k for k in sorted(set(a) | set(b)) if k not in allowed and a.get(k) != b.get(k)]
    if diffs:
        raise ConfigError(
            f"--resume: the config differs from the run's saved config.yaml in {diffs}; "
            f"resume with the same settings (only {', '.join(sorted(allowed))} may change)"
        )


def load_run_config(
    cls: type[T],
    args,
    run_dir: str | Path | None = None,
    *,
    init_key: str = "init_from",
    output_key: str | None = None,
) -> tuple[T, Path]:
    """The run's config and folder from `--config`, `--set`, `--init-from`, `-o` and `--resume`.

    `run_dir`: `-o`; with `output_key` (grpo's `output_dir`) the config may name the folder
    instead, and `-o` overrides it. `init_key`: the dotted field `--init-from` sets.
    """
    overrides = list(args.overrides)
    if getattr(args, "init_from", None):
        if not Path(args.init_from, "config.json").is_file():
            raise ConfigError(f"--init-from {args.init_from}: not a Hugging Face model folder")
        overrides.append(f"{init_key}={args.init_from}")
    if output_key and run_dir is not None:
        overrides.append(f"{output_key}={run_dir}")
    if run_dir is None and output_key:
        base = load_config(cls, args.config, overrides) if args.config else None
        run_dir = getattr(base, output_key) if base else defaults(cls)[output_key]
    if run_dir is None:
        raise ConfigError("-o/--output RUN is required")
    run_dir = Path(run_dir)
    if not args.resume:
        return load_config(cls, args.config, overrides), run_dir
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        raise ConfigError(f"--resume: {saved_file} does not exist; is {run_dir} a run folder?")
    saved = load_config(cls, saved_file)
    allowed = (*RESUMABLE, output_key) if output_key else RESUMABLE
    cfg = load_config(cls, args.config or saved_file, overrides)
    check_same_experiment(saved, cfg, allowed=allowed)
    return cfg, run_dir
