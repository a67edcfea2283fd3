"""Generators for README.md and the docs pages: every generated block is computed from the code
(argparse parsers, config dataclasses, package docstrings) or from committed result files."""
