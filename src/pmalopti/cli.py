"""The `pmalopti` command: argument parsing and dispatch only.

Each subcommand lives in `pmalopti.commands.<name>` and defines
`register(subparsers) -> None`, which adds its parser and sets `func=run(args) -> int`.
Subcommand modules are discovered, so adding a command never edits this file.
Heavy imports (torch, transformers) happen inside each command's `run`, so `--help` is fast.

Errors: anything a user can cause (`UserError`, config and value errors, OSError such as a full
disk or a missing permission, too-deep or too-large input, YAML errors) ends in one line
`pmalopti CMD: error: ...` and exit code 2; `-v` also prints the traceback. Any other exception
is a bug and keeps its traceback. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
import traceback

from pmalopti import __version__, commands
from pmalopti.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `pmalopti CMD: error: ...`, without the usage block
    (exit code 2, as argparse); subcommand parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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


def describe(exc: BaseException) -> str | None:
    """The one line for an error a user can cause, or None for a bug (shown with a traceback)."""
    if isinstance(exc, OSError) and not isinstance(exc, UserError):
        if exc.filename is None or not exc.strerror:
            return str(exc)
        names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{names}: {exc.strerror}"
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read (recursion limit)"
    if isinstance(exc, OverflowError):
        return f"a number is too large: {exc}"
    if isinstance(exc, MemoryError):
        return "out of memory (is an input or a setting far larger than intended?)"
    # yaml is imported by the commands that read YAML (not by `merge`, which stays light): an
    # error can only be a YAMLError if yaml was imported
    yaml = sys.modules.get("yaml")
    if isinstance(exc, UserError | ValueError) or (yaml and isinstance(exc, yaml.YAMLError)):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors a user can cause print one line and return 2 (`-v` adds the
    traceback); Ctrl-C returns 130; anything else is a bug and raises with its traceback."""
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
    except BrokenPipeError:  # `pmalopti ... | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        line = describe(exc)
        if line is None:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"pmalopti {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
