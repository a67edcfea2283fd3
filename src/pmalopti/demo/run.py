"""`run_demo`: the three stages in order, then figures, `summary.json` and `REPORT.md`.

Each stage writes its own run folder inside the demo folder, as its command would. `summary.json`
and `REPORT.md` are written last and atomically, so a demo folder without them is unfinished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pmalopti.config import save_config, to_dict
from pmalopti.demo.config import DemoConfig
from pmalopti.runtime.fs import atomic_write_json, atomic_write_text, prepare_run_dir, read_json

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Copy the package's log messages into the demo folder."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    pkg = logging.getLogger("pmalopti")
    old_level = pkg.level
    pkg.addHandler(handler)
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
        handler.close()


def _banner(text: str) -> None:
    print(f"\n== pmalopti demo: {text} ==", file=sys.stderr, flush=True)


def machine() -> str:
    import torch

    return (
        f"{platform.machine()} CPU, {os.cpu_count()} cores visible, "
        f"{torch.get_num_threads()} torch threads"
        + (f", CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )


# What each stage writes in the demo folder: removed before the stage (re)starts on --resume.
STAGE_OUTPUTS = {
    "pretrain": ("data", "pretrain", "pma-init"),
    "sft": ("sft-from-*",),
    "grpo": ("grpo", "grpo-ar-lopti"),
}


class _Stages:
    """Stages in order; with `resume`, a stage finished before (its `stages/<name>.json`) is
    kept and the first unfinished one, and every later one, starts over."""

    def __init__(self, out: Path, resume: bool):
        self.out, self.resume, self.timings = out, resume, {}

    def run(self, name: str, fn) -> dict:
        done = self.out / "stages" / f"{name}.json"
        if self.resume and done.is_file():
            saved = read_json(done)
            log.info("demo: stage %s finished before; kept (--resume)", name)
            self.timings[name] = saved["seconds"]
            return saved["result"]
        self.resume = False  # everything after a re-run stage is re-run too
        for pattern in STAGE_OUTPUTS[name]:
            for p in self.out.glob(pattern):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        t = time.perf_counter()
        result = fn()
        self.timings[name] = time.perf_counter() - t
        atomic_write_json(done, {"result": result, "seconds": self.timings[name]})
        return result


def run_demo(
    cfg: DemoConfig,
    out: str | Path,
    *,
    force: bool = False,
    resume: bool = False,
    size: str = "full",
    command: str = "",
) -> dict:
    """Run the demo into `out`; returns the summary (also written to `out/summary.json`).

    `resume`: continue a demo folder whose run stopped; finished stages are kept (the caller
    checks that `cfg` is the saved one)."""
    from pmalopti.demo import figures
    from pmalopti.demo.finetune_stage import run_grpo, run_sft
    from pmalopti.demo.pretrain_stage import run_pretrain, write_pma_init
    from pmalopti.demo.writeup import console_summary, report_markdown
    from pmalopti.runtime.runlog import read_metrics
    from pmalopti.runtime.threads import torch_threads

    out = prepare_run_dir(out, force=force, resume=resume, kind="demo")
    start = out / "stages" / "start.json"
    if resume and start.is_file():  # the size and command of the run being continued
        size, command = read_json(start)["size"], read_json(start)["command"]
    else:
        atomic_write_json(start, {"size": size, "command": command})
    save_config(cfg, out / "demo_config.yaml")
    stages = _Stages(out, resume)
    timings = stages.timings
    # Torch threads from the cores this process may use (runtime.threads.auto_threads).
    with _log_to(out / "demo.log"), torch_threads():
        _banner("1/3 pre-training with online PMA")

        def stage1() -> dict:
            pre = run_pretrain(cfg, out)
            return {"pretrain": pre, "pma_init": write_pma_init(cfg, pre, out)}

        s1 = stages.run("pretrain", stage1)
        pre, pma_init = s1["pretrain"], s1["pma_init"]

        _banner("2/3 SFT from the PMA merge and from the latest checkpoint")
        inits = {"latest": pma_init["latest"], "pma": pma_init["path"]}
        inits["annealed"] = pma_init["annealed"]
        sft_runs = stages.run("sft", lambda: run_sft(cfg, inits, out))

        _banner("3/3 GRPO vs GRPO + AR + Lopti")
        init = sft_runs[cfg.grpo_init]["checkpoint"]
        grpo_runs = stages.run("grpo", lambda: run_grpo(cfg, init, out))

        t = time.perf_counter()
        fig = out / "figures"
        figures.plot_pretrain(
            read_metrics(Path(pre["run"]) / "metrics.jsonl"), pre, fig / "pretrain.png"
        )
        figures.plot_sft(sft_runs, fig / "sft.png")
        figures.plot_grpo(grpo_runs, fig / "grpo.png")
        figures.plot_buckets(grpo_runs, fig / "buckets.png")
        timings["report"] = time.perf_counter() - t
        timings["total"] = sum(timings.values())  # of each stage's own run, also on --resume
        summary = {
            "command": command or f"pmalopti demo -o {out}",
            "size": size,
            "seed": cfg.seed,
            "out": str(out),
            "machine": machine(),
            "timings": timings,
            "config": to_dict(cfg),
            "pretrain": pre,
            "pma_init": pma_init,
            "sft": sft_runs,
            "grpo": grpo_runs,
        }
        atomic_write_json(out / "summary.json", summary)
        atomic_write_text(out / "REPORT.md", report_markdown(summary))
    print(console_summary(summary))
    return summary
