"""Per-rank memory of writing an online PMA merge of an FSDP2 model, 2 gloo ranks on CPU.

The ~160M-parameter float32 model of `merge_vs_mergekit.py` (its tensor shapes, as plain
parameters) is wrapped with `fully_shard` on 2 ranks; `OnlineAverager` holds each rank's shard of
a merge. Then one way of writing the merge is timed, with each rank's resident memory sampled
every 2 ms (from /proc/self/statm) and reported as the peak above what the rank held before:
  - `full`: `merged_state_dict(full=True)` on every rank, then rank 0 `write_hf_checkpoint`
    (what PMACallback did before);
  - `hf`: `dcp_online.save_merge_hf` (shards gathered to rank 0 one tensor at a time);
  - `dcp`: `dcp_online.save_merge_dcp` (every rank saves its own shards).
Each way runs in fresh processes, so the allocator's cache of an earlier one does not hide it.

Run:  python benchmarks/online_write_fsdp2.py [--json benchmarks/results/online_write_fsdp2.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

PAGE = os.sysconf("SC_PAGE_SIZE")


def shapes() -> dict[str, tuple[int, ...]]:
    h, kv, inter, vocab = 768, 128, 3072, 32000
    out = {"embed": (vocab, h)}
    for i in range(13):
        out |= {
            f"l{i}_q": (h, h), f"l{i}_k": (kv, h), f"l{i}_v": (kv, h), f"l{i}_o": (h, h),
            f"l{i}_gate": (inter, h), f"l{i}_up": (inter, h), f"l{i}_down": (h, inter),
            f"l{i}_norm1": (h,), f"l{i}_norm2": (h,),
        }  # fmt: skip
    return out | {"norm": (h,), "lm_head": (vocab, h)}


class Params(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name, s in shapes().items():
            self.register_parameter(name, nn.Parameter(torch.full(s, 0.01)))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Peak:
    """Highest resident memory seen by a sampling thread while the block runs."""

    def __enter__(self) -> Peak:
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss())


def worker(rank: int, way: str, workdir: str, result: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from pmalopti.pma import dcp_online
    from pmalopti.pma.online import OnlineAverager
    from pmalopti.pma.writer import write_hf_checkpoint

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{workdir}/pg-{way}", rank=rank, world_size=2
    )
    mesh = init_device_mesh("cpu", (2,))
    model = Params()
    fully_shard(model, mesh=mesh)
    avg = OnlineAverager(model, method="sma", n=1, interval=1, every=1)
    avg.step(1)  # the merge of one snapshot: each rank holds its shard of it, float32
    out = Path(workdir) / f"out-{way}"
    dist.barrier()
    t0 = time.perf_counter()
    with Peak() as p:
        if way == "full":
            tensors = avg.merged_state_dict(full=True)
            if rank == 0:
                write_hf_checkpoint(tensors, out, force=True)
            del tensors
        elif way == "hf":
            dcp_online.save_merge_hf(avg, out, force=True)
        else:
            dcp_online.save_merge_dcp(avg, out, force=True)
        dist.barrier()
    secs = time.perf_counter() - t0
    facts = [None, None]
    dist.all_gather_object(
        facts, {"rank": rank, "base_gb": p.base / 1e9, "peak_above_gb": (p.peak - p.base) / 1e9}
    )
    if rank == 0:
        Path(result).write_text(json.dumps({"seconds": secs, "ranks": facts}))
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    params = sum(math.prod(s) for s in shapes().values())
    load_before = os.getloadavg()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in ("full", "hf", "dcp"):
            res = Path(tmp) / f"{way}.json"
            torch.multiprocessing.spawn(worker, args=(way, tmp, str(res)), nprocs=2, join=True)
            r = json.loads(res.read_text())
            rows[way] = {
                "seconds": round(r["seconds"], 2),
                "peak_above_gb": [round(x["peak_above_gb"], 3) for x in r["ranks"]],
                "rss_before_gb": [round(x["base_gb"], 3) for x in r["ranks"]],
            }
            print(way, rows[way], file=sys.stderr)
    result = {
        "benchmark": "online_write_fsdp2",
        "command": "python benchmarks/online_write_fsdp2.py " + " ".join(sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parameters": params,
        "model_gb_float32": round(params * 4 / 1e9, 3),
        "ranks": 2,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "ways": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
