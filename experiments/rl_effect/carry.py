"""The imperfect demonstrations of experiments/rl_effect and the scan that picks the start model.

The SFT corpus answers a share of its sums with the no-carry sum (every digit (a_i + b_i) mod 10,
the systematic error of a student who never carries); the SFT model then puts probability near
that share on the wrong digit wherever a carry reaches, and a verifiable reward can select the
right procedure. `scan` answers held-out sums greedily with every SFT checkpoint; `pick_start`
chooses the GRPO start model from it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

START_BAND = (0.30, 0.50)  # greedy held-out accuracy of the start model (issue: ~30-50 %)


def no_carry_sum(a: int, b: int) -> int:
    """The sum with every carry dropped: each digit is (a_i + b_i) mod 10.

    >>> no_carry_sum(457, 68), no_carry_sum(99, 1), no_carry_sum(5, 5)
    (415, 90, 0)
    """
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def write_corpus(path: Path, task_kwargs: dict, noise: float, size: int) -> Path:
    """`size` reversed sums of the task's train split (seed 0) as prompt/target pairs, a share
    `noise` of them (drawn with a fixed seed) answered with the no-carry sum; `no_carry` marks
    them. The file is written once (atomically) and reused."""
    from pmalopti.runtime.fs import atomic_write_text
    from pmalopti.tasks import get_task

    if path.exists():
        return path
    task = get_task("arithmetic", **task_kwargs)
    rng = random.Random(f"rl_effect/sft-noise/{noise}")
    lines = []
    for r in task.samples("train", n=size, seed=0):
        wrong = rng.random() < noise
        ans = str(no_carry_sum(r["a"], r["b"]) if wrong else int(r["answer"]))
        row = {"prompt": task.prompt(r), "target": ans[::-1], "no_carry": wrong}
        lines.append(json.dumps(row) + "\n")
    atomic_write_text(path, "".join(lines))
    return path


def _greedy(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    import torch

    model.eval()
    tok.padding_side = "left"  # generation continues at the right edge
    outs: list[str] = []
    for i in range(0, len(prompts), 100):
        enc = tok(prompts[i : i + 100], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        outs += tok.batch_decode(ids[:, enc["input_ids"].size(1) :], skip_special_tokens=True)
    return [o.strip() for o in outs]


def _fork(true: str, wrong: str) -> int:
    """The first index where `true` and `wrong` differ (`wrong` ends first: its length).

    >>> _fork("311", "31"), _fork("215", "205")
    (2, 1)
    """
    return next((i for i, (x, y) in enumerate(zip(true, wrong)) if x != y), len(wrong))  # noqa: B905


def p_true_at_fork(
    model, tok, prompts: list[str], true: list[str], wrong: list[str]
) -> list[float]:
    """π(true digit) at the first digit where the true and the no-carry answer differ, given
    the prompt and the true answer before it (teacher forcing, T = 1)."""
    import torch

    fork = [_fork(t, w) for t, w in zip(true, wrong, strict=True)]
    tok.padding_side = "right"  # causal: padding after the text changes no earlier logit
    enc = tok([p + t for p, t in zip(prompts, true, strict=True)], return_tensors="pt",
              padding=True, add_special_tokens=False)  # fmt: skip
    with torch.no_grad():
        probs = model(**enc).logits.float().softmax(-1)  # (B, T, V)
    out = []
    for i, (p, f) in enumerate(zip(prompts, fork, strict=True)):
        pos = len(tok(p, add_special_tokens=False)["input_ids"]) + f  # the true digit's token
        out.append(float(probs[i, pos - 1, enc["input_ids"][i, pos]]))
    return out


def measure(ckpt: Path, task_kwargs: dict, seed: int = 0, n: int = 400) -> dict[str, float]:
    """Greedy answers of `ckpt` on `n` held-out sums (test split, `seed`: that seed's GRPO
    evaluation set): the share correct overall and on sums with and without a carry (a carry
    sum's true and no-carry sums differ), the share of carry sums answered with the no-carry sum,
    and the probability of the true digit where the two answers fork (p_true_at_fork)."""
    import torch

    from pmalopti.runtime.hf import load_model, load_tokenizer
    from pmalopti.tasks import get_task

    torch.set_num_threads(1)
    task = get_task("arithmetic", **task_kwargs)
    rows = task.samples("test", n=n, seed=seed)
    nc = [str(no_carry_sum(r["a"], r["b"]))[::-1] for r in rows]
    carry = [i for i, r in enumerate(rows) if nc[i] != task.expected(r)]
    plain = [i for i in range(n) if i not in set(carry)]
    model, tok = load_model(ckpt), load_tokenizer(ckpt)
    outs = _greedy(model, tok, [task.prompt(r) for r in rows],
                   max_new_tokens=int(task_kwargs.get("max_digits", 3)) + 3)  # fmt: skip
    ok = [task.reward(o, r) == 1.0 for o, r in zip(outs, rows, strict=True)]
    pt = p_true_at_fork(model, tok, [task.prompt(rows[i]) for i in carry],
                        [task.expected(rows[i]) for i in carry], [nc[i] for i in carry])  # fmt: skip
    return {
        "accuracy": sum(ok) / n,
        "accuracy_with_carry": sum(ok[i] for i in carry) / len(carry),
        "accuracy_without_carry": sum(ok[i] for i in plain) / len(plain),
        "no_carry_answers_of_carry_sums": sum(outs[i] == nc[i] for i in carry) / len(carry),
        "share_with_carry": len(carry) / n,
        # the first digit a carry changes: mean π(true digit), share with 0.25 <= π < 0.75
        "p_true_at_fork": sum(pt) / len(pt),
        "fork_share_0.25_0.75": sum(0.25 <= x < 0.75 for x in pt) / len(pt),
    }


def scan(sft: Path, task_kwargs: dict, done: dict[str, dict]) -> dict[str, dict]:
    """{step: measure(...)} on seed 0's held-out sums for every checkpoint-<step> of the SFT run
    `sft` not already in `done`."""
    res = dict(done)
    for ck in sorted(sft.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1])):
        step = ck.name.split("-")[1]
        if step not in res:
            res[step] = measure(ck, task_kwargs)
            print(f"{sft.name} {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in res[step].items()))
    return res


def pick_start(scan: dict[str, dict]) -> str:
    """`--base-step auto`: of the SFT checkpoints in START_BAND, the one that answers the most
    carry sums with the no-carry sum (the strongest preference for the wrong procedure; the rule
    behind the CPU run's BASE_STEP, see README)."""
    band = {k: r for k, r in scan.items() if START_BAND[0] <= r["accuracy"] <= START_BAND[1]}
    if not band:
        raise SystemExit(f"no SFT checkpoint has greedy accuracy in {START_BAND}: see the scan")
    return max(band, key=lambda k: (band[k]["no_carry_answers_of_carry_sums"], -int(k)))


def scan_table(scan: dict) -> str:
    """run.py --stage scan (sft_scan.json): greedy answers of the SFT checkpoints on 400 held-out
    sums (seed 0's evaluation set) -- how the start model was picked."""
    lines = [
        "**The SFT checkpoints** (greedy answers on seed 0's 400 held-out sums; a carry sum is one "
        "whose true sum differs from its no-carry sum; noise = share of no-carry SFT answers; the "
        "fork = the first digit where the true and the no-carry answer differ, π = the model's "
        "probability of the true digit there, given the prompt and the true digits before it)",
        "",
        "| SFT | step | accuracy | sums without a carry | carry sums | carry sums answered "
        "with the no-carry sum | mean π at the fork | forks with 0.25 ≤ π < 0.75 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, steps in scan.items():
        for step, r in sorted(steps.items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"| {name} | {step} | {r['accuracy']:.3f} | {r['accuracy_without_carry']:.3f} | "
                f"{r['accuracy_with_carry']:.3f} | {r['no_carry_answers_of_carry_sums']:.3f} | "
                f"{r['p_true_at_fork']:.3f} | {r['fork_share_0.25_0.75']:.3f} |"
            )
    share = next(iter(next(iter(scan.values())).values()))["share_with_carry"]
    lines += ["", f"Carry sums are {share:.1%} of the held-out set."]
    return "\n".join(lines) + "\n"


FORK_COLUMNS = {
    "accuracy": "accuracy",
    "accuracy_with_carry": "carry sums",
    "no_carry_answers_of_carry_sums": "carry sums answered with the no-carry sum",
    "p_true_at_fork": "mean π at the fork",
    "fork_share_0.25_0.75": "forks with 0.25 ≤ π < 0.75",
}


def fork_table(fork: dict, names: dict[str, str]) -> str:
    """run.py --stage fork (fork.json): the start model and each variant's final model at the
    digits a carry changes, start → final, mean over seeds."""
    lines = [
        "**At the digits a carry changes** (run.py `--stage fork`: each seed's 400 held-out sums, "
        "start model → the run's final model, mean over seeds; columns as in the SFT-checkpoint "
        "table)",
        "",
        "| variant | seeds | " + " | ".join(FORK_COLUMNS.values()) + " |",
        "|---|---:|" + "---:|" * len(FORK_COLUMNS),
    ]
    for v, by_seed in fork.items():
        runs = list(by_seed.values())
        cells = []
        for k in FORK_COLUMNS:
            a = sum(r["start"][k] for r in runs) / len(runs)
            b = sum(r["final"][k] for r in runs) / len(runs)
            cells.append(f"{a:.3f} → {b:.3f}")
        lines.append(f"| {names.get(v, v)} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
