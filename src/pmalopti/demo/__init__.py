"""`pmalopti demo`: the whole system on a tiny model, on a CPU, in minutes, with no downloads.

1. pre-train a tiny LM under a Warmup-Stable-Decay schedule with online PMA (live vs SMA / WMA /
   EMA merges vs the annealed model);
2. PMA-init: SFT on arithmetic from the merge, beside SFT from the latest checkpoint;
3. GRPO vs GRPO + AR + Lopti from the same SFT model with the same seed, with the token-probability
   bucket shares;
4. `REPORT.md`, `summary.json` and figures, beside every stage's run folder, config and log.

    from pmalopti.demo import load_demo_config, run_demo
    summary = run_demo(load_demo_config(smoke=True), "demo-out")

This package only orchestrates: the work is done by `pmalopti.lm`, `pmalopti.grpo`, `pmalopti.pma`,
`pmalopti.rl` and `pmalopti.tasks` through their public functions.
"""

from pmalopti.demo.config import DemoConfig, load_demo_config

__all__ = ["DemoConfig", "load_demo_config", "run_demo"]


def __getattr__(name: str):
    if name == "run_demo":
        from pmalopti.demo.run import run_demo

        return run_demo
    raise AttributeError(f"module 'pmalopti.demo' has no attribute {name!r}")
