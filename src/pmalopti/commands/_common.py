"""The flags every command shares, declared once so they mean the same everywhere.

- `-o/--output` and `--force` on every command that writes a folder (`add_output`); `--force`
  replaces only what pmalopti wrote (see `pmalopti.runtime.fs`).
- `--config FILE`, `--set KEY=VALUE`, `--resume` and `--init-from` on the training commands
  (`add_training`).
- `--method NAME [--alpha A]` wherever checkpoints are merged (`add_merge_method`).

Old spellings (`--output-dir`, `--out`, `--method ema:0.2`) are accepted, hidden from `--help`.
"""

from __future__ import annotations

import argparse

from pmalopti.pma.spec import MergeSpec
from pmalopti.pma.weights import METHODS

FORCE_HELP = (
    "replace OUT if pmalopti wrote it (never ., a parent folder, an input, or a folder without "
    "pmalopti's marker); a training run then starts from an empty folder"
)


def add_output(
    parser: argparse.ArgumentParser,
    *,
    help: str,
    metavar: str = "OUT",
    required: bool = False,
    default: str | None = None,
    old: tuple[str, ...] = (),
    force: bool = True,
) -> None:
    """`-o/--output OUT` (dest `output`) and `--force`; `old` spellings stay as hidden aliases."""
    parser.add_argument(
        "-o", "--output", metavar=metavar, required=required, default=default, help=help
    )
    for flag in old:
        parser.add_argument(flag, dest="output", metavar=metavar, help=argparse.SUPPRESS)
    if force:
        add_force(parser)


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def add_config(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeated `--set KEY=VALUE` (dest `overrides`)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, dotted (repeatable), e.g. --set optim.lr=3e-4",
    )


def add_training(
    parser: argparse.ArgumentParser, *, resume_checkpoint: bool = False, init_from: bool = True
) -> None:
    """`--config`, `--set`, `--resume` (with `resume_checkpoint`: `--resume [CKPT]`) and
    `--init-from CKPT`."""
    add_config(parser)
    if resume_checkpoint:
        parser.add_argument(
            "--resume",
            nargs="?",
            const="latest",
            metavar="CKPT",
            help="continue OUT from its newest checkpoint (or the one given); uses "
            "OUT/config.yaml unless --config is given",
        )
    else:
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue OUT from its newest checkpoint; uses OUT/config.yaml unless "
            "--config is given",
        )
    if init_from:
        parser.add_argument(
            "--init-from",
            metavar="CKPT",
            help="start from these weights with a fresh optimizer (PMA-init: a merged folder)",
        )


class _MethodAction(argparse.Action):
    """`--method NAME`; the old `NAME:ALPHA` spelling also sets `alpha`."""

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            name, alpha = MergeSpec.split(value)  # the one parser of the NAME:ALPHA spelling
        except ValueError as exc:
            parser.error(f"argument --method: {exc}")
        if name not in METHODS:
            parser.error(f"argument --method: {value!r} is not one of {', '.join(METHODS)}")
        setattr(namespace, self.dest, name)
        if alpha is not None:
            namespace.alpha = alpha


def add_merge_method(parser, *, default: str | None = "sma") -> None:
    """`--method {sma,ema,wma}` and `--alpha A` (EMA's weight of the newest checkpoint)."""
    parser.add_argument(
        "--method",
        action=_MethodAction,
        default=default,
        metavar="{" + ",".join(METHODS) + "}",
        help="sma: equal weights" + (" (default)" if default == "sma" else "") + "; wma: weight "
        "i/sum, the newest weighs most; ema: the recursion with --alpha",
    )
    parser.add_argument(
        "--alpha", type=float, help="EMA weight of the newest checkpoint, in (0, 1] (paper: 0.2)"
    )
