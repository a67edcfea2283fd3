"""Errors a user can cause: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


class OutputError(UserError, FileExistsError):
    """An output path that may not be written (exists, is an input, is `.`, not pmalopti's)."""
