"""Natural-language rendering of Knights and Knaves puzzles, prompts and reference solutions.

Quizzes use our own names and sentence templates in the style of the published data
(Xie et al., "On Memorization of Large Language Models in Logical Reasoning"; Logic-RL). The chat
prompt reproduces the published prompt exactly (its system text, ChatML, and the pre-filled
`<think>`), so instruct models see what the paper's models saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from pmalopti.tasks.kk.parse import LEAVES, Tree
from pmalopti.tasks.kk.solve import evaluate

NAMES: tuple[str, ...] = (
    "Ada", "Anton", "Bianca", "Bruno", "Celia", "Clara", "Cyrus", "Dalia", "Dmitri", "Edgar",
    "Elena", "Emil", "Flora", "Felix", "Gideon", "Greta", "Hana", "Hugo", "Ingrid", "Ivo",
    "Jonas", "Juno", "Kenji", "Kira", "Leon", "Lena", "Milo", "Marta", "Nadia", "Nils",
    "Oscar", "Otto", "Paula", "Petra", "Quinn", "Rafael", "Rosa", "Selma", "Silas", "Tessa",
    "Tomas", "Una", "Umar", "Vera", "Viktor", "Wren", "Wyatt", "Xenia", "Yara", "Yusuf",
    "Zara", "Zeno", "Agnes", "Basil", "Cosima", "Dorian", "Esme", "Farah", "Ines", "Linus",
)  # fmt: skip

# {name}: the speaker; {claim}: the claim as a clause; {Claim}: capitalised, opening a quote.
TEMPLATES: tuple[str, ...] = (
    "{name} said that {claim}.",
    "{name} told you that {claim}.",
    "{name} insisted that {claim}.",
    "{name} claimed that {claim}.",
    '{name} said, "{Claim}."',
    '"{Claim}," {name} declared.',
    '"{Claim}," {name} remarked.',
    'According to {name}, "{Claim}."',
    'In {name}\'s words: "{Claim}."',
    '{name} announced: "{Claim}."',
)

QUIZ_HEAD = (
    "On a remote island every inhabitant is either a knight, who always tells the truth, "
    "or a knave, who always lies. You meet {n} inhabitants: {names}."
)
QUIZ_TAIL = "So who is a knight and who is a knave?"

# The published system prompt (Logic-RL), verbatim, typos included, so chat prompts match.
SYSTEM_PROMPT = (
    "You are a helpful assistant. The assistant first thinks about the reasoning process in the "
    "mind and then provides the user with the answer. The reasoning process and answer are "
    "enclosed within <think> </think> and<answer> </answer> tags, respectively, i.e., <think> "
    "reasoning process here </think><answer> answer here </answer>.  Now the user asks you to "
    "solve a logical reasoning problem. After thinking, when you finally reach a conclusion, "
    "clearly state the identity of each character within <answer> </answer> tags. i.e., "
    "<answer> (1) Zoey is a knight\n(2) ... </answer>."
)

PLAIN_HEAD = "Knights always tell the truth and knaves always lie."
PLAIN_TAIL = "Who is a knight and who is a knave?"


def role(knight: bool) -> str:
    return "knight" if knight else "knave"


def render_claim(tree: Tree, names: Sequence[str], *, nested: bool = False) -> str:
    """The claim of a statement tree in English ("Ada is a knight or Bruno is not a knave")."""
    op = tree[0]
    if op in LEAVES:
        return f"{names[tree[1]]} is a {role(op == 'telling-truth')}"
    if op == "not" and tree[1][0] in LEAVES:
        return f"{names[tree[1][1]]} is not a {role(tree[1][0] == 'telling-truth')}"
    parts = [render_claim(t, names, nested=True) for t in tree[1:]]
    if op == "not":
        text = f"it is not the case that {parts[0]}"
    elif op in ("and", "or"):
        text = (
            f" {op} ".join(parts)
            if len(parts) == 2
            else ", ".join(parts[:-1]) + f", {op} {parts[-1]}"
        )
    elif op == "->":
        text = f"if {parts[0]} then {parts[1]}"
    else:
        text = f"{parts[0]} if and only if {parts[1]}"
    # Below the top level a compound claim is bracketed: "A and (B or C)" stays unambiguous.
    return f"({text})" if nested else text


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def join_names(names: Sequence[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return ", ".join(names[:-1]) + f", and {names[-1]}"


def render_quiz(statements: Sequence[Tree], names: Sequence[str], rng: random.Random) -> str:
    """The puzzle text: the island rules, the inhabitants, one templated sentence each."""
    sentences = []
    for i, tree in enumerate(statements):
        claim = render_claim(tree, names)
        template = rng.choice(TEMPLATES)
        sentences.append(template.format(name=names[i], claim=claim, Claim=_capitalise(claim)))
    head = QUIZ_HEAD.format(n=len(names), names=join_names(names))
    return " ".join([head, *sentences, QUIZ_TAIL])


def solution_text_format(names: Sequence[str], solution: Sequence[bool]) -> str:
    """ "(1) Ada is a knight\\n(2) Bruno is a knave": the answer format of the published data."""
    return "\n".join(
        f"({i + 1}) {n} is a {role(k)}"
        for i, (n, k) in enumerate(zip(names, solution, strict=True))
    )


def solution_text(names: Sequence[str], solution: Sequence[bool]) -> str:
    return join_names([f"{n} is a {role(k)}" for n, k in zip(names, solution, strict=True)]) + "."


def plain_prompt(statements: Sequence[Tree], names: Sequence[str], *, prefill: str) -> str:
    """A compact prompt for tiny models: one "Name: claim." line per person."""
    lines = [
        f"{n}: {_capitalise(render_claim(t, names))}."
        for n, t in zip(names, statements, strict=True)
    ]
    return "\n".join([PLAIN_HEAD, *lines, PLAIN_TAIL]) + "\n" + prefill


def worked_solution(
    statements: Sequence[Tree], names: Sequence[str], solution: Sequence[bool]
) -> str:
    """The reasoning inside <think>: each claim checked against the solution, one line each.

    Every claim is true exactly for the knights, which is what makes the solution consistent.
    """
    roles = np.asarray([solution], dtype=bool)  # (1, N)
    lines = []
    for i, tree in enumerate(statements):
        truth = bool(evaluate(tree, roles)[0])
        claim = render_claim(tree, names)
        lines.append(f"{names[i]} says {claim}: {str(truth).lower()}, so a {role(solution[i])}.")
    return "\n".join(lines)


def target_text(
    statements: Sequence[Tree], names: Sequence[str], solution: Sequence[bool], *, prefilled: bool
) -> str:
    """The reference response; with `prefilled` it continues a prompt that ends in "<think>"."""
    think = "" if prefilled else "<think>"
    body = worked_solution(statements, names, solution)
    return f"{think}\n{body}\n</think>\n<answer>{solution_text_format(names, solution)}</answer>"
