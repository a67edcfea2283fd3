"""`pmalopti merge` against mergekit's `linear` merge and the I/O floor, measured in one run.

Makes N checkpoints of a ~160M-parameter bf16 Qwen2-style model (200 MB shards, ~320 MB each)
under WORKDIR, then times, each in its own child process so that peak RSS is comparable:
  1. reading the N checkpoints once (`cat > /dev/null`), the I/O floor;
  2. `pmalopti merge --method sma` of the N (and of the newest 2, to see memory growth in N; and
     with `--read-ahead 16MiB`, the option for network filesystems); it never imports torch
     (checked with `python -X importtime`, recorded as `pmalopti_imports_torch`);
  3. `python -c 'import numpy'`, the start-up pmalopti's time includes, and `import torch`,
     the start-up it no longer pays;
  4. mergekit `linear` of the same N (weights 1, dtype float32, out_dtype bfloat16);
and compares our output with mergekit's tensor by tensor (in bf16 ulps).

mergekit lives in its own virtual environment (see benchmarks/README.md):
    python3 -m venv /tmp/mergekit-venv
    /tmp/mergekit-venv/bin/pip install torch==2.13.0 && /tmp/mergekit-venv/bin/pip install mergekit

Run:  python benchmarks/merge_vs_mergekit.py [--workdir /tmp/pmalopti-bench] [--n 10]
The checkpoints and outputs stay in WORKDIR (removed with --clean); the measurements go to
benchmarks/results/merge_vs_mergekit.json (--json), which docs/benchmarks.md is generated from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pmalopti.pma.in_memory import merged_state_dict
from pmalopti.pma.reader import CheckpointReader
from pmalopti.pma.writer import write_hf_checkpoint


def make_checkpoints(root: Path, n: int, seed: int = 0) -> list[Path]:
    """N checkpoints = one random model + small independent perturbations, bf16, 200 MB shards."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=13,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        dtype="bfloat16",
        architectures=["Qwen2ForCausalLM"],  # mergekit picks its tensor layout from this
    )
    h, kv, inter = cfg.hidden_size, 2 * 64, cfg.intermediate_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (cfg.vocab_size, h)}
    params = sum(math.prod(s) for s in shapes.values())
    gen = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    paths = []
    for i in range(n):
        out = root / f"checkpoint-{(i + 1) * 1000}"
        paths.append(out)
        if (out / "model.safetensors.index.json").is_file():
            cfg.save_pretrained(out)  # reuse the weights of an earlier run
            continue

        def tensors(i=i):
            g = torch.Generator().manual_seed(seed + 1 + i)
            for k, b in base.items():
                yield k, (b + 0.002 * torch.randn(b.shape, generator=g)).to(torch.bfloat16)

        write_hf_checkpoint(tensors(), out, config=cfg, shard_size=200_000_000, force=True)
    print(f"{n} checkpoints of {params / 1e6:.0f}M parameters (bf16) in {root}", file=sys.stderr)
    return paths


def measure(cmd: list[str], **kw) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (GB) and CPU seconds (user + system) of one command.

    GNU time reports the child's own peak: `ru_maxrss` from wait4() in this process would
    include the memory of this (large) parent at fork time.
    """
    with tempfile.NamedTemporaryFile("r") as f:
        t0 = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", f.name, *cmd], check=True, **kw)
        wall = time.perf_counter() - t0
        kib, user, system = f.read().split()[-3:]
    return wall, int(kib) * 1024 / 1e9, float(user) + float(system)


def imports_torch(cmd: list[str]) -> bool:
    """Whether the Python command `cmd` imports torch (or transformers), per -X importtime."""
    done = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, check=True
    )
    modules = [
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    ]
    return any(m.split(".")[0] in ("torch", "transformers") for m in modules)


def ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers at |x| (8 significant bits)."""
    e = torch.floor(torch.log2(x.abs().clamp_min(2.0**-126)))
    return torch.exp2(e - 7)


def compare(ours: Path, theirs: Path) -> dict[str, float]:
    """Largest |difference|, share of elements that differ, and how many differ by more than one
    bf16 ulp (beyond 1e-6, the float32 accumulation error where a sum cancels to ~0)."""
    with CheckpointReader(ours) as a, CheckpointReader(theirs) as b:
        if set(a.specs) != set(b.specs):
            raise RuntimeError(f"tensor names differ: {sorted(set(a.specs) ^ set(b.specs))[:5]}")
        max_abs, differ, beyond, total = 0.0, 0, 0, 0
        for name in a.specs:
            x, y = a.read(name).float(), b.read(name).float()
            d = (x - y).abs()
            max_abs = max(max_abs, float(d.max()))
            differ += int((d > 0).sum())
            beyond += int(((d > ulp_bf16(torch.maximum(x.abs(), y.abs()))) & (d > 1e-6)).sum())
            total += d.numel()
    return {"max_abs": max_abs, "share_differ": differ / total, "beyond_1ulp": beyond}


def same_as_torch(ours: Path, ckpts: list[Path]) -> bool:
    """Whether our merge holds exactly the bits of the torch in-memory merge (pma.arithmetic)."""
    ref = merged_state_dict(ckpts, [1 / len(ckpts)] * len(ckpts))
    with CheckpointReader(ours) as r:
        return set(r.specs) == set(ref) and all(torch.equal(r.read(k), v) for k, v in ref.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pmalopti-bench"))
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--mergekit", default="/tmp/mergekit-venv/bin/mergekit-yaml")
    ap.add_argument("--repeats", type=int, default=1, help="best-of repeats for each timing")
    ap.add_argument("--clean", action="store_true", help="remove WORKDIR at the end")
    ap.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parent / "results" / "merge_vs_mergekit.json",
        help="where to write the measurements",
    )
    args = ap.parse_args()
    load_start = os.getloadavg()
    work = args.workdir
    ckpts = make_checkpoints(work / "run", args.n)
    files = sorted(str(f) for c in ckpts for f in c.glob("*.safetensors"))
    size_gb = sum(os.path.getsize(f) for f in files) / 1e9
    devnull = subprocess.DEVNULL
    # Warm the page cache so that every contender reads from memory, as in the numbers.
    subprocess.run(["cat", *files], stdout=devnull, check=True)

    def best(cmd: list[str], out: Path | None) -> tuple[float, float, float]:
        runs = []
        for _ in range(args.repeats):
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            runs.append(measure(cmd, stdout=devnull))
        return min(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs)

    rows: dict[str, tuple[float, float, float]] = {}
    rows["read once (cat > /dev/null)"] = best(["cat", *files], None)
    pma = [sys.executable, "-m", "pmalopti", "merge", "--method", "sma", "--no-progress", "-o"]
    rows["pmalopti merge, N=2"] = best(
        [*pma, str(work / "ours-2"), *map(str, ckpts[-2:])], work / "ours-2"
    )
    rows[f"pmalopti merge, N={args.n}"] = best(
        [*pma, str(work / "ours"), *map(str, ckpts)], work / "ours"
    )
    ahead = [*pma, str(work / "ours-ra"), "--read-ahead", "16MiB", *map(str, ckpts)]
    rows[f"pmalopti merge, N={args.n}, --read-ahead 16MiB"] = best(ahead, work / "ours-ra")
    shutil.rmtree(work / "ours-ra", ignore_errors=True)
    uses_torch = imports_torch(ahead)
    shutil.rmtree(work / "ours-ra", ignore_errors=True)
    rows["python -c 'import numpy' (startup)"] = best([sys.executable, "-c", "import numpy"], None)
    rows["python -c 'import torch' (not needed)"] = best(
        [sys.executable, "-c", "import torch"], None
    )
    have_mergekit = Path(args.mergekit).is_file()
    if have_mergekit:
        for n, out in ((2, "mergekit-2"), (args.n, "mergekit")):
            yml = work / f"mergekit-{n}.yml"
            models = "\n".join(
                f"  - model: {c}\n    parameters:\n      weight: 1.0" for c in ckpts[-n:]
            )
            yml.write_text(
                f"merge_method: linear\nmodels:\n{models}\ndtype: float32\nout_dtype: bfloat16\n"
            )
            cmd = [args.mergekit, str(yml), str(work / out), "--lazy-unpickle", "--quiet"]
            rows[f"mergekit linear, N={n}"] = best(cmd, work / out)
    else:
        print(f"mergekit not found at {args.mergekit}; see benchmarks/README.md", file=sys.stderr)

    ours = rows[f"pmalopti merge, N={args.n}"]
    print(
        f"\n{args.n} checkpoints, {size_gb:.2f} GB of bf16 safetensors, page cache warm, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| job | wall (s) | CPU (s) | peak RSS (GB) |\n|---|---:|---:|---:|")
    for name, (wall, rss, cpu) in rows.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {rss:.2f} |")
    print()
    floor = rows["read once (cat > /dev/null)"][0]
    print(f"pmalopti / read-once floor: {ours[0] / floor:.1f}x the wall time")
    rss2 = rows["pmalopti merge, N=2"][1]
    print(f"pmalopti peak RSS N={args.n} vs N=2: {100 * (ours[1] / rss2 - 1):+.1f}%")
    print(f"pmalopti merge imports torch: {uses_torch}")
    torch_bits = same_as_torch(work / "ours", ckpts)
    print(f"pmalopti merge == torch in-memory merge, bit for bit: {torch_bits}")
    if have_mergekit:
        mk = rows[f"mergekit linear, N={args.n}"]
        print(
            f"mergekit / pmalopti: {mk[0] / ours[0]:.1f}x the wall time, {mk[2] / ours[2]:.1f}x "
            f"the CPU time, {mk[1] / ours[1]:.1f}x the peak RSS"
        )
        c = compare(work / "ours", work / "mergekit")
        print(
            f"ours vs mergekit: largest |difference| {c['max_abs']:.3g}, "
            f"{100 * c['share_differ']:.2f}% of elements differ, "
            f"{c['beyond_1ulp']} by more than one bf16 ulp"
        )
    result = {
        "benchmark": "benchmarks/merge_vs_mergekit.py",
        "n": args.n,
        "input_gb": round(size_gb, 3),
        "cpus": os.cpu_count(),
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
        "torch": torch.__version__,
        "repeats": args.repeats,
        "pmalopti_imports_torch": uses_torch,
        "pmalopti_equals_torch_merge": torch_bits,
        "jobs": {
            name: {"wall_s": round(w, 3), "cpu_s": round(c, 3), "peak_rss_gb": round(r, 3)}
            for name, (w, r, c) in rows.items()
        },
    }
    if have_mergekit:
        result["mergekit"] = (
            subprocess.run(
                [
                    str(Path(args.mergekit).with_name("python")),
                    "-c",
                    "import importlib.metadata as m; print(m.version('mergekit'))",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
        result["mergekit_over_pmalopti_wall"] = round(mk[0] / ours[0], 2)
        result["mergekit_over_pmalopti_cpu"] = round(mk[2] / ours[2], 2)
        result["equality"] = c
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    if args.clean:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
