"""The Task protocol every verifiable task follows, a name registry and the TRL reward adapter.

A task turns samples (plain dicts, one per problem) into prompts, reference responses and rewards.
`response` is always the text the model generated *after* the prompt (the trainer strips the eos
token). Nothing here imports a trainer framework: the TRL adapter is a plain function with TRL's
reward-function signature.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Built-in tasks are imported on first use so `import pmalopti.tasks` stays cheap.
_BUILTIN: dict[str, str] = {
    "kk": "pmalopti.tasks.kk",
    "math": "pmalopti.tasks.math",
    "arithmetic": "pmalopti.tasks.arithmetic",
}
_REGISTRY: dict[str, Callable[..., Task]] = {}


class Task(ABC):
    """A verifiable task: samples, prompts, reference responses and a reward.

    Subclasses set `name` and `max_reward` and implement the abstract methods.
    `is_correct` defaults to "the reward reached `max_reward`".
    """

    name: str = ""
    max_reward: float = 1.0
    """The reward of a fully correct, well-formatted response."""

    @abstractmethod
    def samples(
        self, split: str = "train", n: int | None = None, seed: int = 0, **kw: Any
    ) -> list[dict]:
        """Problems of `split` ("train" or "test"), deterministic for a given seed."""

    @abstractmethod
    def prompt(self, sample: Mapping, *, chat: bool = False, tokenizer: Any = None) -> str:
        """The text the model continues: a compact plain prompt, or a chat prompt if `chat`."""

    @abstractmethod
    def target(self, sample: Mapping) -> str:
        """A reference response: `prompt(sample) + target(sample)` is a correct full text."""

    @abstractmethod
    def reward(self, response: str, sample: Mapping) -> float:
        """The scalar reward of `response` (the text generated after the prompt)."""

    def is_correct(self, response: str, sample: Mapping) -> bool:
        return self.reward(response, sample) >= self.max_reward

    @abstractmethod
    def difficulty(self, sample: Mapping) -> int | str:
        """The level used to break accuracy down (people for K&K, digits for arithmetic)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: make `get_task(name, **kwargs)` call the decorated factory (usually a class)."""

    def deco(factory: Callable[..., Task]) -> Callable[..., Task]:
        _REGISTRY[name] = factory
        return factory

    return deco


def available_tasks() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_task(name: str, **kwargs: Any) -> Task:
    """The task called `name` ("kk", "math", "arithmetic" or a registered one), built with kwargs."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise ValueError(f"task: unknown task {name!r}; choose one of {available_tasks()}")
    return _REGISTRY[name](**kwargs)


# ---------------------------------------------------------------------------------------------
# Chat prompts

CHATML_FALLBACK = "<|im_start|>{role}\n{content}\n<|im_end|>\n"


def chat_prompt(system: str | None, user: str, *, tokenizer: Any = None, prefill: str = "") -> str:
    """A chat prompt ending in the assistant turn's opening (plus `prefill`, e.g. "<think>").

    With a tokenizer that has a chat template, its `apply_chat_template` renders the messages;
    without one, the ChatML layout of the published K&K prompts is written by hand.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + prefill
    text = "".join(CHATML_FALLBACK.format(**m) for m in messages)
    return text + "<|im_start|>assistant\n" + prefill


# ---------------------------------------------------------------------------------------------
# TRL adapter

# Keyword arguments TRL's GRPOTrainer passes that are not dataset columns.
_TRL_RESERVED = frozenset(
    {"prompts", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or a conversational list of message dicts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, Mapping):
        return str(completion.get("content", ""))
    raise TypeError(f"completion: expected a string or a list of messages, got {completion!r:.80}")


def trl_reward(task: Task) -> Callable[..., list[float]]:
    """`task.reward` as a TRL reward function `(completions, **columns) -> list[float]`.

    TRL passes every dataset column (except "prompt") as a list aligned with `completions`;
    each completion's sample is rebuilt from those columns.

    >>> from pmalopti.tasks import get_task
    >>> fn = trl_reward(get_task("arithmetic"))
    >>> fn(["5", "6"], a=[2, 2], b=[3, 3], op=["+", "+"])
    [1.0, 0.0]
    """

    def reward_fn(completions: list[Any], **columns: Any) -> list[float]:
        n = len(completions)
        cols = {
            k: v
            for k, v in columns.items()
            if k not in _TRL_RESERVED and isinstance(v, Sequence) and not isinstance(v, str)
        }
        for k, v in cols.items():
            if len(v) != n:
                raise ValueError(f"reward column {k!r} has {len(v)} values for {n} completions")
        return [
            float(task.reward(completion_text(c), {k: v[i] for k, v in cols.items()}))
            for i, c in enumerate(completions)
        ]

    reward_fn.__name__ = f"{task.name}_reward"
    reward_fn.__qualname__ = reward_fn.__name__
    return reward_fn
