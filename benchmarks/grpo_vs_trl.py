"""`pmalopti grpo`'s trainer against TRL's GRPOTrainer, end to end, on the same tiny CPU setup.

    python benchmarks/grpo_vs_trl.py [--steps 8] [--rounds 2] [--threads 1]

Same model (a tiny Llama, random init so every response runs to the length limit and both
trainers generate the same number of tokens), same prompts (arithmetic), P = 8 prompts × G = 8
completions, 16 new tokens, temperature 1, no top-k/top-p, one optimizer step per rollout batch
(token-mean loss, β = 0, AdamW). Measured in one process, interleaved in rounds so that machine
load hits every contender alike; each number is the median over steps after one warm-up step.
Wall-clock and process CPU time are both reported (CPU time is steadier on a shared machine).

Contenders: ours with the KV-cache sampling loop (`rollout.engine=loop`, the default), ours
with `transformers.generate` (`engine=hf`), and `trl.GRPOTrainer` (which uses `generate`).
The second table splits our step into phases (rollout, old log-probs, update).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

P, G, NEW_TOKENS, LR = 8, 8, 16, 1e-5


def tiny(seed: int = 0):
    from pmalopti.models.tiny import build_tiny_model, build_tokenizer, tiny_config
    from pmalopti.tasks import get_task

    task = get_task("arithmetic", max_digits=2)
    samples = task.samples("train", n=512, seed=0)
    tok = build_tokenizer([task.prompt(s) + task.target(s) for s in samples], vocab_size=384)
    cfg = tiny_config(
        len(tok),
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return build_tiny_model(cfg, seed=seed), tok, task, samples


def run_ours(engine: str, steps: int) -> dict[str, float]:
    from pmalopti.config import load_config
    from pmalopti.grpo.config import GRPOConfig
    from pmalopti.grpo.trainer import GRPOTrainer

    model, tok, task, samples = tiny()
    cfg = load_config(
        GRPOConfig,
        None,
        [
            f"rollout.prompts_per_step={P}",
            f"rollout.group_size={G}",
            f"rollout.max_new_tokens={NEW_TOKENS}",
            f"rollout.engine={engine}",
            f"algo.minibatch_size={P * G}",
            f"algo.micro_batch_size={P * G}",
            "algo.clip_high=0.2",
            f"optim.lr={LR}",
            "optim.max_grad_norm=1.0",
            f"train.steps={steps + 1}",
            "train.progress=false",
            "train.sample_every=0",
            "train.eval_every=0",
            "train.entropy=false",  # TRL computes no entropy by default either
        ],
    )
    trainer = GRPOTrainer(cfg, model, tok, task, train_samples=samples)
    trainer.train_step()  # warm-up
    recs, wall, cpu = [], [], []
    for _ in range(steps):
        w0, c0 = time.perf_counter(), time.process_time()
        recs.append(trainer.train_step())
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)

    def med(k):
        return statistics.median(r[k] for r in recs)

    return {
        "step_s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "tokens": statistics.median(r["throughput/generated_tokens"] for r in recs),
        "rollout_s": med("time/rollout"),
        "old_logprob_s": med("time/old_logprob"),
        "update_s": med("time/update"),
    }


def run_trl(steps: int) -> dict[str, float]:
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pmalopti.tasks import trl_reward

    model, tok, task, samples = tiny()
    ds = Dataset.from_list([{**s, "prompt": task.prompt(s)} for s in samples])
    times: list[float] = []
    cpu: list[float] = []
    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            cpu.append(time.process_time() - self.c0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=P * G,
            num_generations=G,
            max_completion_length=NEW_TOKENS,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            learning_rate=LR,
            max_grad_norm=1.0,
            beta=0.0,
            loss_type="dapo",  # token-mean over the batch, like algo.agg=token-mean
            num_iterations=1,
            max_steps=steps + 1,
            lr_scheduler_type="constant",
            warmup_steps=0,
            seed=0,
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=model,
            processing_class=tok,
            reward_funcs=trl_reward(task),
            args=args,
            train_dataset=ds,
            callbacks=[Clock()],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return {
        "step_s": statistics.median(times[1:]),
        "cpu_s": statistics.median(cpu[1:]),
        "tokens": statistics.median(lengths[1:]) * P * G,
    }


def run_engines(reps: int) -> dict[str, float]:
    """Rollout alone: P·G sequences × NEW_TOKENS, our loop vs generate, CPU s (median)."""
    from pmalopti.grpo.rollout import sample_hf, sample_loop, tokenize_prompts

    model, tok, task, samples = tiny()
    model.eval()
    prompts = [task.prompt(s) for s in samples[:P] for _ in range(G)]
    ids, mask = tokenize_prompts(tok, prompts, 64, "cpu")
    out: dict[str, list[float]] = {"loop": [], "hf": []}
    for _ in range(reps + 1):
        for name, fn in (("loop", sample_loop), ("hf", sample_hf)):
            c0 = time.process_time()
            fn(model, tok, ids, mask, max_new_tokens=NEW_TOKENS, temperature=1.0)
            out[name].append(time.process_time() - c0)
    return {k: statistics.median(v[1:]) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per contender and round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    runs: dict[str, list[dict[str, float]]] = {"ours-loop": [], "ours-hf": [], "trl": []}
    engines = run_engines(3 * a.steps)
    for _ in range(a.rounds):
        runs["ours-loop"].append(run_ours("loop", a.steps))
        runs["trl"].append(run_trl(a.steps))
        runs["ours-hf"].append(run_ours("hf", a.steps))

    def agg(name, key):
        return statistics.median(r[key] for r in runs[name])

    base = agg("trl", "step_s")
    base_cpu = agg("trl", "cpu_s")
    print(
        f"tiny Llama (hidden 64, 2 layers), P={P} × G={G}, {NEW_TOKENS} new tokens, CPU threads "
        f"{a.threads}, {a.rounds} rounds × {a.steps} steps (median)\n"
    )
    print(
        "| trainer | wall s/step | steps/s | generated tokens/s | speed vs TRL (wall) "
        "| CPU s/step | speed vs TRL (CPU) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, label in [
        ("ours-loop", "pmalopti grpo (engine=loop)"),
        ("ours-hf", "pmalopti grpo (engine=hf)"),
        ("trl", f"trl.GRPOTrainer {__import__('trl').__version__}"),
    ]:
        s, c = agg(name, "step_s"), agg(name, "cpu_s")
        print(
            f"| {label} | {s:.3f} | {1 / s:.2f} | {agg(name, 'tokens') / s:.0f} | {base / s:.2f}× "
            f"| {c:.3f} | {base_cpu / c:.2f}× |"
        )
    print(
        f"\nrollout alone ({P * G} sequences × {NEW_TOKENS} tokens, CPU s, median): "
        f"loop {engines['loop']:.4f}, generate {engines['hf']:.4f} "
        f"({engines['hf'] / engines['loop']:.2f}× slower)"
    )
    print("\n| pmalopti phase (wall) | engine=loop (s) | engine=hf (s) |")
    print("|---|---|---|")
    for k in ("rollout_s", "old_logprob_s", "update_s"):
        print(f"| {k[:-2]} | {agg('ours-loop', k):.4f} | {agg('ours-hf', k):.4f} |")


if __name__ == "__main__":
    main()
