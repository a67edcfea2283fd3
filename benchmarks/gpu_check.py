"""One prepared GPU check: built-in GRPO throughput, online-averager overhead, merge throughput.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check.json          # one GPU, <= 8 min
    PYTHONPATH=src python benchmarks/gpu_check.py --tiny --out cpu_tiny.json    # same code, CPU

No downloads: the model is a Qwen2.5-0.5B-sized Qwen2 (hidden 896, 24 layers, 14 heads / 2 KV
heads, MLP 4864, vocabulary 151936, tied head; 494M parameters) with random weights, and the
tokenizer a byte-level BPE trained here on the arithmetic task's prompts (its ids are a prefix of
the model's vocabulary; sampled ids beyond it decode to nothing, which only affects rewards).
`--tiny` runs the same functions on a few-M-parameter Qwen2 on the CPU.

Sections, each in its own try/except with its own time budget (its error or timeout is recorded
in the JSON and the next section runs); the JSON is rewritten after every section:
- `grpo`: `pmalopti.grpo.GRPOTrainer.train_step` (sampling with the KV-cache loop, π_old and
  reference log-probs, update) for GRPO, GRPO + AR (α 0.3) and GRPO + AR + Lopti (η 0.5),
  float32 weights with bf16 autocast, β = 1e-3 against a bf16 reference: steps/s, generated
  tokens/s, the time split, peak memory.
- `online_averager`: a plain training step (AdamW, bf16 autocast, random tokens) with and
  without `OnlineAverager.step` at V = 1 (a snapshot every step, the worst case), accumulators
  on the GPU and on the CPU: time inside the averager / step time.
- `merge`: 10 bf16 checkpoints of the model written to local disk, then `merge_checkpoints`
  (SMA): seconds, GB read, GB/s (page cache warm: the files were just written).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

SCHEMA = "pmalopti.gpu_check/1"
MIN_SECTION_S = 5.0  # a section is not started with less time than this left


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full GPU check or its CPU miniature."""

    device: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    prompts: int  # P prompts per GRPO step
    group: int  # G completions per prompt
    new_tokens: int  # response length cap (random weights rarely sample eos)
    minibatch: int  # sequences per optimizer step
    micro: int  # sequences per forward/backward
    grpo_steps: int  # timed steps per variant (after one warm-up step)
    train_batch: int  # online averager: sequences per training step
    train_len: int  # online averager: tokens per sequence
    online_steps: int  # timed training steps per online-averager variant
    checkpoints: int  # merge: N checkpoints
    budgets: tuple[tuple[str, float], ...]  # seconds per section


FULL = Plan("cuda", 896, 24, 14, 2, 4864, 151936, 8, 8, 256, 32, 16, 3, 8, 512, 12, 10,
            (("grpo", 270.0), ("online_averager", 60.0), ("merge", 110.0)))  # fmt: skip
TINY = Plan("cpu", 64, 2, 4, 2, 256, 4096, 4, 4, 16, 8, 4, 2, 4, 64, 6, 10,
            (("grpo", 240.0), ("online_averager", 60.0), ("merge", 60.0)))  # fmt: skip
VARIANTS = {"grpo": (0.0, None), "grpo+ar": (0.3, None), "grpo+ar+lopti": (0.3, 0.5)}


class SectionTimeout(Exception):
    """A section ran past its budget."""


@contextlib.contextmanager
def budget(seconds: float):
    """Raise SectionTimeout in the main thread after `seconds` (SIGALRM; Unix)."""

    def fire(signum, frame):
        raise SectionTimeout(f"ran past its budget of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    import pmalopti

    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pmalopti": getattr(pmalopti, "__version__", None),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu_memory_gb": props.total_memory / 2**30, "bf16": torch.cuda.is_bf16_supported()}
    return env


def build(plan: Plan, device: torch.device):
    """(model, tokenizer, task): a random-weight Qwen2 of the plan's size and a local tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from pmalopti.models.tiny import build_tokenizer
    from pmalopti.tasks import get_task

    task = get_task("arithmetic")
    samples = task.samples("train", n=256, seed=0)
    texts = [task.prompt(s) for s in samples] + [str(task.target(s)) for s in samples]
    tok = build_tokenizer(texts, vocab_size=min(plan.vocab, 1024), split_digits=True)
    config = Qwen2Config(
        vocab_size=plan.vocab, hidden_size=plan.hidden, intermediate_size=plan.intermediate,
        num_hidden_layers=plan.layers, num_attention_heads=plan.heads,
        num_key_value_heads=plan.kv_heads, max_position_embeddings=32768, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # peaked next-token distributions: both Lopti groups get tokens
        model.model.norm.weight.mul_(8.0)
    return model, tok, task, samples


def grpo_section(plan: Plan, device, model, tok, task, samples, deadline: float) -> dict:
    from pmalopti.grpo.config import (
        AlgoConfig,
        GRPOConfig,
        ModelConfig,
        OptimConfig,
        RolloutConfig,
        TrainConfig,
    )  # fmt: skip
    from pmalopti.grpo.trainer import GRPOTrainer

    ref = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, Any] = {
        "param_dtype": "float32",
        "autocast": "bfloat16",
        "ref_dtype": "bfloat16",
    }
    for name, (alpha, eta) in VARIANTS.items():
        model.load_state_dict(init)
        cfg = GRPOConfig(
            model=ModelConfig(autocast="bfloat16", device=device.type),
            rollout=RolloutConfig(
                prompts_per_step=plan.prompts, group_size=plan.group, temperature=1.0,
                max_new_tokens=plan.new_tokens, batch_size=plan.prompts * plan.group,
            ),
            algo=AlgoConfig(
                alpha=alpha, eta=eta, clip_high=0.24, kl_coef=1e-3,
                minibatch_size=plan.minibatch, micro_batch_size=plan.micro,
            ),
            optim=OptimConfig(lr=1e-6),
            train=TrainConfig(steps=plan.grpo_steps + 1, eval_every=0, save_every=0,
                              sample_every=0, entropy=False, progress=False),
        )  # fmt: skip
        trainer = GRPOTrainer(cfg, model, tok, task, train_samples=samples, ref_model=ref)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warm = trainer.train_step()
        steps = []
        while len(steps) < plan.grpo_steps and time.monotonic() + warm["time/step"] < deadline:
            steps.append(trainer.train_step())
        sync(device)
        if not steps:
            out[name] = {"error": "no timed step fitted in the section budget", "warmup": warm}
            continue
        secs = sum(m["time/step"] for m in steps)
        tokens = sum(m["throughput/generated_tokens"] for m in steps)
        out[name] = {
            "alpha": alpha, "eta": eta, "timed_steps": len(steps),
            "steps_per_s": len(steps) / secs,
            "generated_tokens_per_s": tokens / secs,
            "rollout_tokens_per_s": tokens / sum(m["time/rollout"] for m in steps),
            "seconds_per_step": {
                k.removeprefix("time/"): sum(m[k] for m in steps) / len(steps)
                for k in ("time/rollout", "time/old_logprob", "time/update", "time/step")
            },
            "sequences_per_step": plan.prompts * plan.group,
            "generated_tokens_per_step": tokens / len(steps),
            "optimizer_steps_per_step": steps[-1]["actor/optimizer_steps"],
            "lopti_low_token_share": steps[-1].get("lopti/low_token_share"),
            "warmup_step_seconds": warm["time/step"],
            "peak_memory_gb": peak_gb(device),
        }  # fmt: skip
        del trainer
    base = out["grpo"]["seconds_per_step"]["step"] if "steps_per_s" in out.get("grpo", {}) else None
    for name in ("grpo+ar", "grpo+ar+lopti"):
        if base and "steps_per_s" in out.get(name, {}):
            out[name]["step_time_vs_grpo"] = out[name]["seconds_per_step"]["step"] / base
    return out


def online_section(plan: Plan, device, model) -> dict:
    from pmalopti.pma.online import OnlineAverager

    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    g = torch.Generator(device).manual_seed(0)
    shape = (plan.train_batch, plan.train_len)
    ids = torch.randint(0, min(plan.vocab, 1000), shape, device=device, generator=g)
    model.train()

    def run(averager: OnlineAverager | None) -> tuple[float, float]:
        """(mean step seconds, mean seconds inside averager.step), after two warm-up steps."""
        total = inside = 0.0
        for i in range(plan.online_steps + 2):
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            t1 = time.perf_counter()
            if averager is not None:
                averager.step(i + 1)
                sync(device)
            t2 = time.perf_counter()
            if i >= 2:
                total, inside = total + t2 - t0, inside + t2 - t1
        return total / plan.online_steps, inside / plan.online_steps

    out: dict[str, Any] = {"interval": 1, "n": 10, "steps": plan.online_steps}
    base, _ = run(None)
    out["baseline_step_seconds"] = base
    for where in ("same", "cpu"):
        averager = OnlineAverager(model, method="sma", n=10, interval=1, device=where)
        averager.step(0)
        step, inside = run(averager)
        out[f"accumulators_{where}"] = {
            "step_seconds": step, "inside_averager_seconds": inside,
            "inside_over_baseline_step": inside / base, "step_over_baseline": step / base,
        }  # fmt: skip
        del averager
    out["peak_memory_gb"] = peak_gb(device)
    return out


def merge_section(plan: Plan, model, tok, workdir: Path) -> dict:
    from pmalopti.pma.streaming import merge_checkpoints

    root = Path(tempfile.mkdtemp(prefix="pmalopti-gpu-check-", dir=workdir))
    try:
        cpu = copy.deepcopy(model).to("cpu", torch.bfloat16)
        paths, t0 = [], time.perf_counter()
        for i in range(plan.checkpoints):
            with torch.no_grad():
                next(cpu.parameters()).add_(1e-3)  # distinct checkpoints
            path = root / f"checkpoint-{i + 1}"
            cpu.save_pretrained(path)
            tok.save_pretrained(path)
            paths.append(path)
        write_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in paths[0].glob("*.safetensors"))
        t0 = time.perf_counter()
        merge_checkpoints(paths, [1.0] * len(paths), root / "merged", progress=False)
        secs = time.perf_counter() - t0
        read = size * len(paths)
        return {
            "checkpoints": len(paths), "dtype": "bfloat16", "checkpoint_gb": size / 1e9,
            "write_seconds": write_s, "merge_seconds": secs, "gb_read": read / 1e9,
            "read_gb_per_s": read / 1e9 / secs, "page_cache": "warm (files just written)",
            "workdir": str(workdir),
        }  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_json(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--tiny", action="store_true", help="the same code paths on the CPU, small")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder for checkpoints")
    p.add_argument("--total-budget", type=float, default=480.0, help="seconds for everything")
    args = p.parse_args(argv)
    plan = TINY if args.tiny else FULL
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --tiny for the CPU miniature)", file=sys.stderr)
        return 2
    start = time.monotonic()
    device = torch.device(plan.device)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": "cpu-tiny" if args.tiny else "gpu",
        "label": "CPU miniature (--tiny): code-path check, not GPU numbers" if args.tiny
        else "one-GPU check",
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
        "plan": asdict(plan),
        "sections": {},
    }  # fmt: skip
    sections = record["sections"]

    def run(name: str, seconds: float, fn) -> Any:
        left = args.total_budget - (time.monotonic() - start) - 5  # 5 s to write the JSON
        if left < MIN_SECTION_S:
            sections[name] = {"status": "skipped", "error": "total budget spent"}
            write_json(args.out, record)
            return None
        seconds = min(seconds, left)
        t0 = time.monotonic()
        try:
            with budget(seconds):  # the section's loops stop on their own at 90 % of it
                result = fn(t0 + 0.9 * seconds)
            sections[name] = {"status": "ok", "result": result}
        except SectionTimeout as e:
            sections[name] = {"status": "timeout", "error": str(e)}
            result = None
        except Exception as e:
            sections[name] = {"status": "error", "error": f"{type(e).__name__}: {e}",
                              "traceback": traceback.format_exc(limit=8)}  # fmt: skip
            result = None
        sections[name]["seconds"] = time.monotonic() - t0
        record["peak_gpu_memory_gb"] = peak_gb(device)
        record["elapsed_seconds"] = time.monotonic() - start
        write_json(args.out, record)
        print(
            f"[gpu_check] {name}: {sections[name]['status']} in {sections[name]['seconds']:.1f} s"
        )
        return result

    budgets = dict(plan.budgets)
    run("environment", 30.0, lambda _: environment(device))
    built = run("build_model", 60.0, lambda _: build(plan, device))
    if built is not None:
        model, tok, task, samples = built
        record["model_parameters"] = sum(p.numel() for p in model.parameters())
        run(
            "grpo",
            budgets["grpo"],
            lambda dl: grpo_section(plan, device, model, tok, task, samples, dl),
        )
        run(
            "online_averager",
            budgets["online_averager"],
            lambda _: online_section(plan, device, model),
        )
        workdir = args.workdir or Path(tempfile.gettempdir())
        run("merge", budgets["merge"], lambda _: merge_section(plan, model, tok, workdir))
    record["finished"] = True
    write_json(args.out, record)
    failed = [k for k, v in sections.items() if v["status"] != "ok"]
    print(f"[gpu_check] wrote {args.out}; sections not ok: {failed or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
