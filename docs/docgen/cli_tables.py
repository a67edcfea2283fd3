"""The command table and each command's options, read from `pmalopti.cli.build_parser()`."""

from __future__ import annotations

import argparse


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, str, object]]:
    """(full name, help line, parser) of every subcommand, nested ones after their parent."""
    sub = _subparsers(parser)
    if sub is None:
        return []
    helps = {a.dest: a.help for a in sub._choices_actions}
    out = []
    for name, child in sub.choices.items():
        if name not in helps or helps[name] == argparse.SUPPRESS:  # aliases and hidden commands
            continue
        full = f"{prefix} {name}"
        out.append((full, helps[name] or "", child))
        out += _commands(child, full)
    return out


def root_parser() -> argparse.ArgumentParser:
    from pmalopti.cli import build_parser

    return build_parser()


def command_table() -> str:
    rows = ["| command | what it does |", "|---|---|"]
    for full, help_line, _ in _commands(root_parser(), "pmalopti"):
        rows.append(f"| `{full}` | {_cell(help_line)} |")
    return "\n".join(rows)


def find_command(path: list[str]) -> argparse.ArgumentParser:
    parser = root_parser()
    for name in path:
        sub = _subparsers(parser)
        if sub is None or name not in sub.choices:
            raise KeyError(f"no command 'pmalopti {' '.join(path)}'")
        parser = sub.choices[name]
    return parser


def _spelling(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        return f"`{name} ...`" if action.nargs in ("+", "*") else f"`{name}`"
    metavar = ""
    if action.nargs != 0:
        if action.metavar:
            mv = action.metavar
        elif action.choices:
            mv = "|".join(str(c) for c in action.choices)
        else:
            mv = action.dest.upper()
        metavar = f" [{mv}]" if action.nargs == "?" else f" {mv}"
    return f"`{', '.join(action.option_strings)}{metavar}`".replace("|", "\\|")


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": prog}
    default = action.default
    empty = default is None or default is False or default == [] or default == ""
    shown = not empty and default != argparse.SUPPRESS and action.nargs != 0
    if shown and "default" not in text:
        text = f"{text} (default: {default})" if text else f"default: {default}"
    return text


def options_table(path: list[str]) -> str:
    """Every visible option of `pmalopti PATH...` with its help text (argparse's own wording)."""
    parser = find_command(path)
    rows = ["| option | meaning |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        rows.append(f"| {_spelling(action)} | {_cell(_help(action, parser.prog))} |")
    return "\n".join(rows)
