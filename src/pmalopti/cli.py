"""The `pmalopti` command: argument parsing and dispatch only.

Each subcommand lives in `pmalopti.commands.<name>` and defines
`register(subparsers) -> None`, which adds its parser and sets `func=run(args) -> int`.
Subcommand modules are discovered, so adding a command never edits this file.
Heavy imports (torch, transformers) happen inside each command's `run`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from pmalopti import __version__, commands
from pmalopti.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pmalopti",
        description="Checkpoint averaging (PMA) and AR/Lopti GRPO for language models.",
    )
    parser.add_argument("--version", action="version", version=f"pmalopti {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"pmalopti.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pmalopti: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"pmalopti {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
