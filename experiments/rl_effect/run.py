"""Does GRPO improve a tiny model, and do AR and Lopti help it? (arXiv 2505.12929 at CPU scale)

A regime where plain GRPO clearly raises held-out accuracy, then the paper's four variants from
the same start model, every seed reported:

1. data    runs/rl_effect/data/corpus.jsonl: 30,000 "a+b=" + reversed-sum texts, 2-3 digit
           operands (pmalopti.tasks arithmetic, reverse=True, train split, seed 123), and the SFT
           corpus data/sft-noise<P>.jsonl: 20,000 prompt/target pairs, a share P (SFT_NOISE) of
           them answered with the no-carry sum (imperfect demonstrations, see README);
2. base    `pmalopti pretrain --config pretrain.yaml` (400 steps: the format, 0 % accuracy), then
           `pmalopti sft --config sft.yaml` on the SFT corpus from its checkpoint-400; the GRPO
           start model is the SFT checkpoint BASE_STEP (`--base-step auto`: pick_start on the scan);
   scan    greedy answers of every SFT checkpoint on 400 held-out sums -> RUNS/sft_scan.json;
3. grpo    `pmalopti grpo --config grpo.yaml` for each variant x seed (`--parallel` at a time, one
           torch thread each; finished runs are skipped). `--setting` picks the main comparison
           or one of the SETTINGS tried while looking for the regime;
4. report  summarize.py: summary.json, search.json, sft_scan.json, figures, the results section of
           README.md and of docs/experiments.md, from the run logs (copied, trimmed, into logs/).

    python experiments/rl_effect/run.py                          # everything (~60 min, 2 busy cores)
    python experiments/rl_effect/run.py --stage grpo --setting n0.5-2250-T1.0 --variants grpo --seeds 0
    python experiments/rl_effect/run.py --stage report           # tables and figures from logs/

How it differs from the paper: a 1M-parameter model pre-trained and fine-tuned here on reversed
2-3 digit addition, the SFT half on a systematic wrong answer (paper: Qwen2.5-3B/7B-Instruct on
Knights and Knaves), exact-match reward 0/1, 16 prompts x 8 samples for 200 steps (paper: 64 x 8,
hundreds of steps), beta = 0 (paper 1e-3), lr 5e-5 (paper 1e-6). The loss is the authors'
(token-mean per micro-batch / accumulation steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from carry import measure, pick_start, scan, write_corpus  # experiments/rl_effect/carry.py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

TASK = {"min_digits": 2, "max_digits": 3, "reverse": True}
CORPUS_SIZE, CORPUS_SEED = 30_000, 123
PRETRAIN_STEP = 400
# The SFT checkpoint every GRPO run starts from (see README: "the start model"); None = auto.
BASE_STEP: int | None = 2250
# The imperfect demonstrations: this fraction of the SFT answers drops every carry (no_carry_sum).
# 0 is the clean SFT of the first round (runs/rl_effect/sft, task data drawn by `pmalopti sft`).
SFT_NOISE = 0.5
SFT_SIZE = 20_000

VARIANTS: dict[str, list[str]] = {
    "grpo": ["algo.alpha=0.0", "algo.eta=null"],
    "ar": ["algo.alpha=0.3", "algo.eta=null"],
    "lopti": ["algo.alpha=0.0", "algo.eta=0.5"],
    "ar_lopti": ["algo.alpha=0.3", "algo.eta=0.5"],
    # a control, not one of the paper's variants: plain GRPO with two sweeps over each rollout
    # batch, i.e. Lopti's number of optimizer steps (Lopti: one sweep per pass, two passes)
    "grpo_2sweeps": ["algo.alpha=0.0", "algo.eta=null", "algo.ppo_epochs=2"],
}
# The regime search (plain GRPO unless a setting says otherwise): overrides of grpo.yaml, seed 0.
# Round 1 started from the clean SFT (runs/rl_effect/sft: `--noise 0 --base-step 2750` rebuilds
# it) with round 1's grpo.yaml (60 steps, T 0.7, eval every 20): ROUND1 restores those values.
ROUND1 = [
    "model.path=runs/rl_effect/sft/checkpoint-2750",
    "rollout.temperature=0.7",
    "train.steps=60",
    "train.eval_every=20",
]
_PROBE = ["task.eval_size=200", "train.diag_every=0"]  # the first probes: smaller eval, no Fig. 1
_R1: dict[str, list[str]] = {
    # start models at 6-20 % greedy accuracy (clean SFT steps 750-2,500)
    "sft750-lr3e-4": [
        "model.path=runs/rl_effect/sft/checkpoint-750",
        "optim.lr=3e-4",
        "algo.micro_batch_size=16",
        "task.eval_size=200",
        "train.diag_every=5",
    ],
    "sft1250-lr1e-4": ["model.path=runs/rl_effect/sft/checkpoint-1250", "optim.lr=1e-4", *_PROBE],
    "sft1250-lr3e-5": ["model.path=runs/rl_effect/sft/checkpoint-1250", "optim.lr=3e-5", *_PROBE],
    "sft1500-T0.7-mb128-lr1e-4": [
        "model.path=runs/rl_effect/sft/checkpoint-1500",
        "optim.lr=1e-4",
        "rollout.temperature=0.7",
        "algo.minibatch_size=128",
        *_PROBE,
    ],
    "sft1500-T0.7-mb128-lr3e-4": [
        "model.path=runs/rl_effect/sft/checkpoint-1500",
        "optim.lr=3e-4",
        "rollout.temperature=0.7",
        "algo.minibatch_size=128",
        *_PROBE,
    ],
    "sft2500-lr1e-4": ["model.path=runs/rl_effect/sft/checkpoint-2500", "optim.lr=1e-4", *_PROBE],
    "sft2500-T0.7-lr1e-4": [
        "model.path=runs/rl_effect/sft/checkpoint-2500",
        "optim.lr=1e-4",
        "rollout.temperature=0.7",
        *_PROBE,
    ],
    # from clean SFT step 2,750 (round 1's main start; its main: lr 5e-5, T 0.7, 60 steps)
    "lr1e-4": ["optim.lr=1e-4", "rollout.temperature=1.0"],
    "lr2e-4": ["optim.lr=2e-4", "rollout.temperature=1.0"],
    "T1.0": ["rollout.temperature=1.0"],
    "G16": ["rollout.prompts_per_step=8", "rollout.group_size=16", "rollout.temperature=1.0"],
    "sft2500-lr5e-5": ["model.path=runs/rl_effect/sft/checkpoint-2500", "rollout.temperature=1.0"],
    "main": [],  # round 1's main comparison (5 seeds x 4 variants): +6.3 points, bar not met
}
_NOISY = "runs/rl_effect/sft-noise0.5/checkpoint-{}"
SETTINGS: dict[str, list[str]] = {
    "main": [],
    **{f"r1-{k}": [*ROUND1, *v] for k, v in _R1.items()},
    # round 2: SFT on imperfect demonstrations (SFT_NOISE of the answers drop every carry)
    # from noise-0.5 SFT step 2,250 (the main start), 200 steps
    "n0.5-2250-T1.0": ["train.diag_every=0", "rollout.temperature=1.0"],
    "n0.5-2250-T0.7": ["train.diag_every=0"],
    "n0.5-2250-lr1e-4": ["train.diag_every=0", "optim.lr=1e-4"],
    # a second start model: noise-0.6 SFT step 3,750 (in the band, see the SFT scan)
    "n0.6-3750": ["model.path=runs/rl_effect/sft-noise0.6/checkpoint-3750", "train.diag_every=0"],
}


def pmalopti(*argv: str, log: Path | None = None, wait: bool = True):
    """Run one `pmalopti` command in a child process with one torch thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "pmalopti", *argv]
    print("$ pmalopti " + " ".join(argv), flush=True)
    out = open(log, "a") if log else None  # noqa: SIM115 - closed once the process is reaped
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT if out else None
    )
    proc.log_file = out
    if not wait:
        return proc
    rc = proc.wait()
    if out:
        out.close()
    if rc != 0:
        raise SystemExit(f"exit code {rc}: {' '.join(cmd)}" + (f" (see {log})" if log else ""))
    return proc


def sets(kvs: list[str]) -> list[str]:
    return [a for kv in kvs for a in ("--set", kv)]


# --- 1-2. data and the start model -------------------------------------------------------------


def stage_data(runs: Path) -> Path:
    from pmalopti.runtime.fs import atomic_write_text
    from pmalopti.tasks import get_task

    corpus = runs / "data" / "corpus.jsonl"
    if not corpus.exists():
        task = get_task("arithmetic", **TASK)
        rows = task.samples("train", n=CORPUS_SIZE, seed=CORPUS_SEED)
        text = "".join(json.dumps({"text": task.prompt(r) + task.target(r)}) + "\n" for r in rows)
        atomic_write_text(corpus, text)
    return corpus


# Extra `--set` overrides per stage (the GPU protocol scales the model and batches with these).
EXTRA: dict[str, list[str]] = {"pretrain": [], "sft": [], "grpo": []}


def stage_base(runs: Path) -> Path:
    corpus = stage_data(runs)
    pre, sft = runs / "pretrain", sft_dir(runs)
    if not (pre / f"checkpoint-{PRETRAIN_STEP}").exists():
        pmalopti(
            "pretrain", "--config", str(HERE / "pretrain.yaml"),
            *sets([f"data.path={corpus}", f"train.steps={PRETRAIN_STEP}", *EXTRA["pretrain"]]),
            "-o", str(pre), "--force",
        )  # fmt: skip
    data = []
    if SFT_NOISE > 0:
        corpus = write_corpus(
            runs / "data" / f"sft-noise{SFT_NOISE:g}.jsonl", TASK, SFT_NOISE, SFT_SIZE
        )
        data = [f"data.path={corpus}", "data.eval_generate=0"]
    if BASE_STEP is None:  # auto: the whole SFT (sft.yaml's steps), then pick from the scan
        if not (sft / "eval.json").exists():
            pmalopti(
                "sft", "--config", str(HERE / "sft.yaml"),
                "--init-from", str(pre / f"checkpoint-{PRETRAIN_STEP}"),
                *sets([*data, *EXTRA["sft"]]), "-o", str(sft), "--force",
            )  # fmt: skip
        return sft / f"checkpoint-{pick_start(stage_scan(runs))}"
    base = sft / f"checkpoint-{BASE_STEP}"
    if not base.exists():
        pmalopti(
            "sft", "--config", str(HERE / "sft.yaml"),
            "--init-from", str(pre / f"checkpoint-{PRETRAIN_STEP}"),
            *sets([*data, f"train.steps={BASE_STEP}", *EXTRA["sft"]]),
            "-o", str(sft), "--force",
        )  # fmt: skip
    return base


def sft_dir(runs: Path) -> Path:
    return runs / (f"sft-noise{SFT_NOISE:g}" if SFT_NOISE > 0 else "sft")


def stage_scan(runs: Path) -> dict[str, dict]:
    """carry.scan of this SFT's checkpoints, kept in RUNS/sft_scan.json (the report copies it
    beside this file) under "noise<P>"; returns that entry."""
    from pmalopti.runtime.fs import atomic_write_json

    path = runs / "sft_scan.json"
    every = json.loads(path.read_text()) if path.exists() else {}
    key = f"noise{SFT_NOISE:g}"
    every[key] = scan(sft_dir(runs), TASK, every.get(key, {}))
    atomic_write_json(path, every)
    return every[key]


def stage_fork(runs: Path, seeds: list[int], variants: list[str]) -> None:
    """carry.measure of the start model and of each finished main run's final checkpoint, on that
    seed's held-out sums -> RUNS/fork.json {variant: {seed: {"start": .., "final": ..}}}: what
    GRPO did at the digits a carry changes (the report copies it beside this file)."""
    from pmalopti.runtime.fs import atomic_write_json

    path, base = runs / "fork.json", stage_base(runs)
    res = json.loads(path.read_text()) if path.exists() else {}
    start: dict[int, dict] = {}
    for v in variants:
        for seed in seeds:
            run = run_dir(runs, "main", v, seed)
            ckpt = run / f"checkpoint-{steps_of('main')}"
            if str(seed) in res.get(v, {}) or not ckpt.is_dir():
                continue
            if seed not in start:
                start[seed] = measure(base, TASK, seed)
            final = measure(ckpt, TASK, seed)
            res.setdefault(v, {})[str(seed)] = {"start": start[seed], "final": final}
            print(f"fork {v} s{seed}: p_true_at_fork {start[seed]['p_true_at_fork']:.3f} -> "
                  f"{final['p_true_at_fork']:.3f}", flush=True)  # fmt: skip
            atomic_write_json(path, res)


# --- 3. the GRPO runs ---------------------------------------------------------------------------


def run_dir(runs: Path, setting: str, variant: str, seed: int) -> Path:
    return runs / "grpo" / setting / f"{variant}-s{seed}"


def steps_of(setting: str) -> int:
    import yaml

    steps = int(yaml.safe_load((HERE / "grpo.yaml").read_text())["train"]["steps"])
    for kv in [*SETTINGS[setting], *EXTRA["grpo"]]:
        if kv.startswith("train.steps="):
            steps = int(kv.split("=", 1)[1])
    return steps


def run_log(run: Path) -> Path:
    """The per-step log of a `pmalopti grpo` run (metrics.jsonl; log.jsonl before the rename)."""
    new = run / "metrics.jsonl"
    return new if new.exists() else run / "log.jsonl"


def finished(run: Path, steps: int) -> bool:
    log = run_log(run)
    if not log.exists():
        return False
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return any(r.get("step") == steps and "eval/accuracy" in r for r in recs)


def stage_grpo(
    runs: Path, setting: str, seeds: list[int], variants: list[str], parallel: int
) -> None:
    base = stage_base(runs)
    jobs = [(s, v) for s in seeds for v in variants]  # seed-major: every variant gets seed 0 first
    running: list = []
    t0 = time.time()
    for seed, variant in jobs:
        out = run_dir(runs, setting, variant, seed)
        if finished(out, steps_of(setting)):
            print(f"skip {out} (finished)")
            continue
        while len(running) >= parallel:
            running = _reap(running)
            time.sleep(2)
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "grpo", "--config", str(HERE / "grpo.yaml"), "--output-dir", str(out),
            *sets([f"model.path={base}", f"seed={seed}", *SETTINGS[setting], *EXTRA["grpo"]]),
            *sets(VARIANTS[variant]),
            "--force",
        ]  # fmt: skip
        log = out.parent / f"{out.name}.log"
        log.unlink(missing_ok=True)
        running.append((pmalopti(*argv, log=log, wait=False), str(out)))
    while running:
        running = _reap(running)
        time.sleep(2)
    print(f"grpo runs of {setting!r} done in {time.time() - t0:.0f} s", flush=True)
    if FAILED:
        raise SystemExit("failed runs (see their .log): " + ", ".join(FAILED))


FAILED: list[str] = []  # a failed run does not stop the others; the driver exits 1 at the end


def _reap(running):
    still = []
    for proc, name in running:
        rc = proc.poll()
        if rc is None:
            still.append((proc, name))
            continue
        if proc.log_file:
            proc.log_file.close()
        if rc != 0:
            print(f"FAILED {name}: pmalopti grpo exited with {rc} (see {name}.log)", flush=True)
            FAILED.append(name)
        else:
            print(f"done {name}", flush=True)
    return still


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--stage", choices=["all", "data", "base", "scan", "grpo", "fork", "report"], default="all"
    )
    ap.add_argument("--runs", default=str(ROOT / "runs" / "rl_effect"), help="work folder")
    ap.add_argument("--setting", choices=list(SETTINGS), default="main")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--parallel", type=int, default=2, help="GRPO runs at a time (one thread each)")
    for stage in EXTRA:
        ap.add_argument(f"--{stage}-set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--base-step", default=str(BASE_STEP), help="SFT step of the start model, or 'auto' (scan)"
    )
    ap.add_argument(
        "--noise", type=float, default=SFT_NOISE, help="share of no-carry SFT answers (0: clean)"
    )
    ap.add_argument(
        "--digits", type=int, nargs=2, metavar=("MIN", "MAX"), help="operand digits (default 2 3)"
    )
    ap.add_argument("--no-report-docs", action="store_true", help="report into --runs only")
    a = ap.parse_args(argv)
    runs = Path(a.runs)
    for stage in EXTRA:
        EXTRA[stage] = getattr(a, f"{stage}_set")
    globals()["BASE_STEP"] = None if a.base_step == "auto" else int(a.base_step)
    globals()["SFT_NOISE"] = a.noise
    if a.digits:
        TASK.update(min_digits=a.digits[0], max_digits=a.digits[1])
        kw = f"{{min_digits: {a.digits[0]}, max_digits: {a.digits[1]}, reverse: true}}"
        EXTRA["sft"] = [f"data.task_kwargs={kw}", *EXTRA["sft"]]
        EXTRA["grpo"] = [f"task.kwargs={kw}", *EXTRA["grpo"]]
    if a.stage in ("all", "data"):
        stage_data(runs)
    if a.stage in ("all", "base"):
        stage_base(runs)
    if a.stage in ("all", "scan"):
        stage_scan(runs)
    if a.stage in ("all", "grpo"):
        stage_grpo(runs, a.setting, a.seeds, a.variants, a.parallel)
    if a.stage in ("all", "fork"):
        stage_fork(runs, a.seeds, a.variants)
    if a.stage in ("all", "report"):
        from summarize import write_report  # experiments/rl_effect/summarize.py

        out = runs / "report" if a.no_report_docs else HERE
        write_report(
            runs, out, settings=SETTINGS, variants=list(VARIANTS), steps_of=steps_of,
            update_docs=not a.no_report_docs, abbreviations={"ROUND1": ROUND1},
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
