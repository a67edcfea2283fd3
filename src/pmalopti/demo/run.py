"""`run_demo`: the three stages in order, then figures, `summary.json` and `REPORT.md`.

Each stage writes its own run folder inside the demo folder, as its command would. `summary.json`
and `REPORT.md` are written last and atomically, so a demo folder without them is unfinished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pmalopti.config import save_config, to_dict
from pmalopti.demo.config import DemoConfig
from pmalopti.runtime.fs import atomic_write_json, atomic_write_text, prepare_run_dir

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


def run_demo(
    cfg: DemoConfig, out: str | Path, *, force: bool = False, size: str = "full", command: str = ""
) -> dict:
    """Run the demo into `out`; returns the summary (also written to `out/summary.json`)."""
    from pmalopti.demo import figures
    from pmalopti.demo.finetune_stage import run_grpo, run_sft
    from pmalopti.demo.pretrain_stage import run_pretrain, write_pma_init
    from pmalopti.demo.writeup import console_summary, report_markdown
    from pmalopti.lm.loop import read_metrics

    out = prepare_run_dir(out, force=force, kind="demo")
    save_config(cfg, out / "demo_config.yaml")
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    with _log_to(out / "demo.log"):
        _banner("1/3 pre-training with online PMA")
        t = time.perf_counter()
        pre = run_pretrain(cfg, out)
        pma_init = write_pma_init(cfg, pre, out)
        timings["pretrain"] = time.perf_counter() - t

        _banner("2/3 SFT from the PMA merge and from the latest checkpoint")
        t = time.perf_counter()
        inits = {"latest": pma_init["latest"], "pma": pma_init["path"]}
        inits["annealed"] = pma_init["annealed"]
        sft_runs = run_sft(cfg, inits, out)
        timings["sft"] = time.perf_counter() - t

        _banner("3/3 GRPO vs GRPO + AR + Lopti")
        t = time.perf_counter()
        grpo_runs = run_grpo(cfg, sft_runs[cfg.grpo_init]["checkpoint"], out)
        timings["grpo"] = time.perf_counter() - t

        t = time.perf_counter()
        fig = out / "figures"
        figures.plot_pretrain(
            read_metrics(Path(pre["run"]) / "metrics.jsonl"), pre, fig / "pretrain.png"
        )
        figures.plot_sft(sft_runs, fig / "sft.png")
        figures.plot_grpo(grpo_runs, fig / "grpo.png")
        figures.plot_buckets(grpo_runs, fig / "buckets.png")
        timings["report"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
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
