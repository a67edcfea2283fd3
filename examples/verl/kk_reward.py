"""verl custom reward for Knights and Knaves: `reward.custom_reward_function.path=<this file>`.

verl calls `compute_score(data_source, solution_str, ground_truth, extra_info)` per response.
The published K&K parquet stores `reward_model.ground_truth.solution_text_format`; the prompt ends
inside a pre-filled `<think>`, which the Logic-RL reward counts as part of the response.
"""

from __future__ import annotations

from typing import Any

from pmalopti.tasks.kk.io import parse_solution_text_format
from pmalopti.tasks.kk.reward import kk_score


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> dict[str, float]:
    """{"score": 3 | -0.5 | -1 | -3, "acc": 1.0 when fully correct, "format", "answer"}."""
    text = ground_truth["solution_text_format"] if isinstance(ground_truth, dict) else ground_truth
    names, solution = parse_solution_text_format(text)
    total, parts = kk_score(solution_str, names, solution, think_prefilled=True)
    return {"score": total, "acc": float(total == 3.0), **parts}
