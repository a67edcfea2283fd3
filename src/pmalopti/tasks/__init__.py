"""Verifiable tasks and their rewards: Knights and Knaves, math, arithmetic.

    from pmalopti.tasks import get_task, trl_reward
    task = get_task("kk")
    sample = task.samples("train", n=1)[0]
    task.reward("<answer>...</answer>", sample)

Task modules are imported lazily by `get_task`; this package never imports trl or verl.
"""

from pmalopti.tasks.base import (
    Task,
    available_tasks,
    chat_prompt,
    completion_text,
    get_task,
    register_task,
    trl_reward,
)

__all__ = [
    "Task",
    "available_tasks",
    "chat_prompt",
    "completion_text",
    "get_task",
    "register_task",
    "trl_reward",
]
