"""Summarise the loss-spike recovery experiment: a markdown table and a PNG.

    python experiments/loss_spike_recovery/summarize.py RUN_DIR LABEL=RESUMED_RUN ... -o OUT_DIR

RUN_DIR is the spiky run; each LABEL=DIR is a continuation made by `pmalopti recover --resume`.
For each curve: the mean and max training loss over the continuation steps, the number of
steps whose loss breaks the spike rule (loss > FACTOR x the median of the pre-spike window), and
the validation loss at the last step.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pmalopti.pma.report import markdown_table, plot_curves
from pmalopti.runtime.fs import atomic_write_text
from pmalopti.runtime.runlog import read_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("resumed", nargs="+", metavar="LABEL=DIR")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--window", type=int, default=20)
    args = ap.parse_args()

    run = Path(args.run)
    base = read_metrics(run / "metrics.jsonl")
    merges = {}
    curves = {}
    for item in args.resumed:
        label, _, d = item.partition("=")
        d = Path(d)
        merges[label] = json.loads(
            (Path(str(d).removesuffix("-resumed")) / "pmalopti_merge.json").read_text()
        )
        curves[label] = read_metrics(d / "metrics.jsonl")
    spike = next(iter(merges.values()))["spike_step"]
    start = min(r[0]["step"] for r in curves.values())
    end = min(r[-1]["step"] for r in curves.values())
    pre = [r["loss"] for r in base if r["step"] < spike][-args.window :]
    med = statistics.median(pre)

    def stats(rows: list[dict]) -> list:
        seg = [r for r in rows if start <= r["step"] <= end]
        losses = [r["loss"] for r in seg]
        val = [r for r in seg if "val_loss" in r]
        return [
            statistics.fmean(losses),
            max(losses),
            sum(x > args.factor * med for x in losses),
            statistics.fmean(r["val_loss"] for r in val) if val else float("nan"),
            val[-1]["val_loss"] if val else float("nan"),
        ]

    rows = [["original run (no intervention)", "—", *stats(base)]]
    for label, rs in curves.items():
        m = merges[label]
        steps = [i["step"] for i in m["inputs"]]
        rows.append([label, f"{m['method']} of {steps}", *stats(rs)])
    headers = [
        "run",
        "init weights",
        f"mean loss {start}–{end}",
        "max loss",
        f"steps > {args.factor:g}×median",
        "mean val loss (evals in range)",
        f"val loss @ {end}",
    ]
    out = Path(args.out)
    table = markdown_table(headers, rows)
    text = (
        f"Spike at step {spike}; pre-spike median training loss {med:.4f} "
        f"(median of the {len(pre)} losses before it).\n\n" + table
    )
    atomic_write_text(out / "summary.md", text)

    def smooth(rows: list[dict], k: int = 3) -> tuple[list[int], list[float]]:
        # a centred (2k+1)-step moving average: the raw loss at batch 8 is too noisy to read
        xs = [r["step"] for r in rows]
        ys = [r["loss"] for r in rows]
        return xs, [statistics.fmean(ys[max(0, i - k) : i + k + 1]) for i in range(len(ys))]

    first = max(1, start - 40)
    xy = {"original run": smooth([r for r in base if r["step"] >= first])}
    xy.update({k: smooth(v) for k, v in curves.items()})
    plot_curves(
        xy,
        out / "loss_spike_recovery.png",
        ylabel="training loss (7-step moving average)",
        title="Loss-spike recovery with PMA-init (tiny model, constant LR 0.12)",
        vlines={f"spike, step {spike}": spike},
    )
    print(text)


if __name__ == "__main__":
    main()
