"""Helpers of the result renderers: the repository root, reading result files, table cells."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load(rel: str) -> dict:
    path = ROOT / rel
    if not path.is_file():
        raise FileNotFoundError(f"{rel}: result file cited by the docs is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonl(rel: str) -> list[dict]:
    path = ROOT / rel
    if not path.is_file():
        raise FileNotFoundError(f"{rel}: result file cited by the docs is missing")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _pm(pair: list[float], digits: int = 4) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
