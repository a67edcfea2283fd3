"""`pmalopti merge` of DCP checkpoints against `dcp_to_torch_save` + torch averaging, in one run.

Makes N torch.distributed.checkpoint folders of the ~160M-parameter bf16 Qwen2-style model of
`merge_vs_mergekit.py` (the same tensors), each laid out as a 2-rank FSDP2 save writes it (every
tensor in two row halves, in `__0_0.distcp` and `__1_0.distcp`), then times, each in its own
child process under GNU time (wall, CPU, peak RSS):
  1. reading the N folders once (`cat > /dev/null`), the I/O floor;
  2. `pmalopti merge --method sma` of the N (DCP out), and of the newest 2 (memory growth in N);
  3. the obvious alternative: for each input `format_utils.dcp_to_torch_save` into a temporary
     `.pt`, `torch.load` it, add it to a float32 running sum; then cast to bf16 and `dcp.save`;
and compares the two outputs tensor by tensor. The load average is recorded before and after.

Run:  python benchmarks/merge_dcp.py [--workdir /tmp/pmalopti-bench-dcp] [--n 10]
      [--json benchmarks/results/merge_dcp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from merge_vs_mergekit import make_checkpoints, measure


def write_two_rank_dcp(sd: dict[str, torch.Tensor], out: Path) -> None:
    """`sd` as DCP with the layout two FSDP2 ranks save: row halves, one file per rank."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.planner import (
        SavePlan,
        SavePlanner,
        TensorWriteData,
        WriteItem,
        WriteItemType,
    )

    class Slices(SavePlanner):
        def set_up_planner(self, *a, **k): ...
        def create_local_plan(self): ...
        def create_global_plan(self, p): ...
        def finish_plan(self, p): ...

        def resolve_data(self, item):
            c = item.tensor_data.chunk
            return sd[item.index.fqn].narrow(0, c.offsets[0], c.sizes[0]).contiguous()

    plans, md = [SavePlan([]), SavePlan([])], {}
    for k, t in sd.items():
        rows = t.shape[0]
        halves = [(0, (rows + 1) // 2), ((rows + 1) // 2, rows // 2)]
        props, chunks = TensorProperties(dtype=t.dtype), []
        for rank, (start, n) in enumerate(halves):
            off = torch.Size([start] + [0] * (t.dim() - 1))
            c = ChunkStorageMetadata(off, torch.Size([n, *t.shape[1:]]))
            chunks.append(c)
            data = TensorWriteData(c, props, t.shape)
            plans[rank].items.append(
                WriteItem(MetadataIndex(k, off), WriteItemType.SHARD, None, data)
            )
        md[k] = TensorStorageMetadata(props, t.shape, chunks)
    writer = FileSystemWriter(str(out), sync_files=False)
    writer.set_up_storage_writer(True, rank=0, use_collectives=True)
    plans = writer.prepare_global_plan([writer.prepare_local_plan(p) for p in plans])
    results = [writer.write_data(p, Slices()).wait() for p in plans]
    writer.finish(Metadata(md), results)


def make_dcp_checkpoints(workdir: Path, n: int) -> list[Path]:
    from pmalopti.pma.reader import CheckpointReader

    hf = make_checkpoints(workdir / "hf", n)
    out = []
    for p in hf:
        d = workdir / "dcp" / f"step-{p.name.split('-')[1]}"  # torchtitan's name
        if not (d / ".metadata").is_file():
            with CheckpointReader(p) as r:
                write_two_rank_dcp({k: r.read(k) for k in r.specs}, d)
        out.append(d)
    return out


def alternative(inputs: list[str], out: str) -> None:
    """dcp_to_torch_save + torch.load + float32 sum, then dcp.save: the obvious way."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    tmp = Path(out).with_suffix(".tmp.pt")
    for path in inputs:
        dcp_to_torch_save(path, tmp)
        sd = torch.load(tmp, weights_only=True)
        tmp.unlink()
        for k, v in sd.items():
            dtypes[k] = v.dtype
            if k in acc:
                acc[k].add_(v.float(), alpha=1 / len(inputs))
            else:
                acc[k] = v.float() * (1 / len(inputs))
        del sd
    dcp.save({k: v.to(dtypes[k]) for k, v in acc.items()}, checkpoint_id=out, no_dist=True)


def compare(a: Path, b: Path) -> dict[str, float]:
    from pmalopti.pma.dcp_read import DcpSource

    x, y = DcpSource(a), DcpSource(b)
    if set(x.entries) != set(y.entries):
        raise RuntimeError("key sets differ")
    worst, differ, total = 0.0, 0, 0
    for k in x.entries:
        md = x.tensor(k)
        whole = type(md.chunks[0])(torch.Size([0] * len(md.size)), md.size)
        u = x.read(k, whole, torch.empty(tuple(md.size)))
        v = y.read(k, whole, torch.empty(tuple(md.size)))
        worst = max(worst, float((u - v).abs().max()))
        differ += int((u != v).sum())
        total += u.numel()
    return {"max_abs": worst, "share_differ": differ / total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pmalopti-bench-dcp"))
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--alt", nargs="+", help=argparse.SUPPRESS)  # child: the alternative
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.alt:
        alternative(args.alt, args.out)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    inputs = make_dcp_checkpoints(args.workdir, args.n)
    size = sum(f.stat().st_size for d in inputs for f in d.iterdir())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    outs = {k: args.workdir / k for k in ("ours", "ours-2", "alt")}
    for o in outs.values():
        subprocess.run(["rm", "-rf", str(o)], check=True)
    load_before = os.getloadavg()
    merge = [sys.executable, "-m", "pmalopti", "merge", "--method", "sma", "--no-progress"]
    rows = {
        "read once (cat > /dev/null)": measure(
            ["sh", "-c", "cat " + " ".join(f"'{d}'/*" for d in inputs) + " > /dev/null"]
        ),
        f"pmalopti merge, N = {args.n}": measure(
            [*merge, *map(str, inputs), "-o", str(outs["ours"])], env=env,
            stdout=subprocess.DEVNULL,
        ),
        "pmalopti merge, N = 2": measure(
            [*merge, *map(str, inputs[-2:]), "-o", str(outs["ours-2"])], env=env,
            stdout=subprocess.DEVNULL,
        ),
        f"dcp_to_torch_save + torch averaging, N = {args.n}": measure(
            [sys.executable, __file__, "--alt", *map(str, inputs), "--out", str(outs["alt"])],
            env=env,
        ),
        'python -c "import torch" (start-up)': measure(
            [sys.executable, "-c", "import torch"], env=env
        ),
    }  # fmt: skip
    load_after = os.getloadavg()
    result = {
        "benchmark": "merge_dcp",
        "command": "python benchmarks/merge_dcp.py " + " ".join(sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "torch": torch.__version__,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "checkpoints": args.n,
        "gb_per_checkpoint": round(size / args.n / 1e9, 3),
        "layout": "torchtitan step-N, two ranks' row halves per tensor, bf16",
        "rows": {
            name: {"wall_s": round(w, 2), "peak_rss_gb": round(r, 3), "cpu_s": round(c, 2)}
            for name, (w, r, c) in rows.items()
        },
        "ours_vs_alternative": compare(outs["ours"], outs["alt"]),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
