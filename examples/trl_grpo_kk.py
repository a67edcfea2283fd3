"""GRPO with AR + Lopti on Knights and Knaves with TRL, at the paper's settings (arXiv 2505.12929).

    pmalopti kk generate --people 3 --people-max 7 --n 5000 -o kk_train.parquet
    accelerate launch --config_file zero2.yaml --num_processes 4 examples/trl_grpo_kk.py \\
        --model Qwen/Qwen2.5-3B-Instruct --train-file kk_train.parquet --output-dir runs/kk-ar-lopti \\
        --eval-files shared/data/kk/*ppl_test.parquet --report-to tensorboard
    # continue after an interruption, from the newest checkpoint-<step> in --output-dir:
    accelerate launch ... examples/trl_grpo_kk.py ... --resume

(`zero2.yaml`: TRL's `trl/accelerate_configs/zero2.yaml`, shipped inside the installed package.)

Settings (the official AR-Lopti script `train_kklogic_AR-Lopti_4x80GB.sh`, verl):
64 prompts × 8 rollouts per generation batch at T = 0.7; minibatch 256 responses, so 2 optimizer
steps per sweep (4 per generation batch with Lopti); AdamW lr 1e-6, weight decay 0.01, constant
LR; ε_low 0.2, ε_high 0.24, dual clip c = 10 (TRL's `delta`); KL to the initial model, k3,
β = 1e-3; token-mean loss (TRL "dapo"); α = 0.3, η = 0.5; 4096 response tokens; 5 epochs.

Memory: float32 weights + AdamW for a 3B model need ZeRO-2/3 (DeepSpeed) or FSDP across the
4 GPUs, e.g. an accelerate config with `distributed_type: DEEPSPEED`, `zero_stage: 2` (TRL ships
configs in `trl/accelerate_configs/`).

How this differs from the paper's verl run:
- Loss normalisation: TRL's "dapo" divides by the response tokens of the whole generation batch
  scaled to one minibatch; the authors' code takes the token-mean per micro-batch and divides
  by the accumulation steps (pmalopti's verl loss has that as `micro_token_mean`; TRL decides its
  own). TRL's k3 KL has no log-ratio clamp (the authors clamp at ±5).
- `use_bias_correction_kl=False`: TRL's default multiplies the KL term by the ratio; verl does not.
- Training puzzles: generated here (or any file in the published layout, e.g. Logic-RL's
  `merge_34567ppl` training set), not necessarily the paper's exact set.
- TRL's group std uses ε = 1e-4 where verl uses 1e-6.
- Greedy evaluation at the end (`--eval-files`) uses transformers' `generate` on the main process;
  for the paper's sampled evaluation, write responses with vLLM and score them with
  `pmalopti kk score`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPORT_TO = ("none", "tensorboard", "wandb")
LATEST = "latest"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-3B-Instruct", help="HF model id or folder")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--train-file", help="K&K puzzles (.parquet/.jsonl); default: generate them")
    p.add_argument("--train-n", type=int, default=5000, help="puzzles to generate (no file)")
    p.add_argument("--eval-files", nargs="*", default=[], help="test puzzle files to score")
    p.add_argument("--eval-n", type=int, default=100, help="puzzles per eval file")
    p.add_argument("--ar-alpha", type=float, default=0.3, help="AR α (0 = off)")
    p.add_argument("--lopti-eta", type=float, default=0.5, help="Lopti η (0 = off)")
    p.add_argument("--prompts-per-batch", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--minibatch", type=int, default=256, help="responses per optimizer step")
    p.add_argument("--per-device-batch", type=int, default=8, help="responses per GPU forward")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps")
    p.add_argument("--max-completion-length", type=int, default=4096)
    p.add_argument("--use-vllm", action="store_true", help="generate with vLLM (colocate mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps")
    p.add_argument(
        "--report-to",
        choices=REPORT_TO,
        default="none",
        help="metrics backend: none, tensorboard (<output-dir>/runs) or wandb (installed, logged in)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=LATEST,
        default=None,
        metavar="CHECKPOINT",
        help="resume training: alone, from the newest checkpoint-<step> in --output-dir; "
        "or from the given checkpoint folder",
    )
    return p.parse_args(argv)


def resume_checkpoint(args: argparse.Namespace) -> str | None:
    """The checkpoint folder `--resume` names (None without it); an error if there is none."""
    if args.resume is None:
        return None
    if args.resume != LATEST:
        path = Path(args.resume)
        if not (path / "trainer_state.json").is_file():
            _fail(f"--resume {path}: not a Trainer checkpoint (no trainer_state.json)")
        return str(path)
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last is None:
        _fail(f"--resume: no checkpoint-<step> folder in {args.output_dir}")
    return last


def _fail(message: str) -> None:
    """One line on stderr, exit code 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_config(args: argparse.Namespace, num_processes: int):
    import torch

    from pmalopti.integrations.trl import LoptiGRPOConfig

    per_step = args.per_device_batch * num_processes
    if args.minibatch % per_step:
        raise ValueError(
            f"--minibatch {args.minibatch} is not a multiple of --per-device-batch × processes "
            f"({per_step})"
        )
    generation_batch = args.prompts_per_batch * args.rollouts
    if generation_batch % args.minibatch:
        raise ValueError(
            f"prompts × rollouts ({generation_batch}) is not a multiple of --minibatch {args.minibatch}"
        )
    if args.report_to != "none" and importlib.util.find_spec(args.report_to) is None:
        _fail(
            f"--report-to {args.report_to}: the package is not installed (pip install {args.report_to})"
        )
    lopti = args.lopti_eta > 0
    return LoptiGRPOConfig(
        output_dir=args.output_dir,
        ar_alpha=args.ar_alpha,
        # Lopti's two sweeps are TRL's two replays of the generation batch (num_iterations = 2,
        # set by LoptiGRPOConfig from lopti_eta).
        lopti_eta=args.lopti_eta if lopti else None,
        num_generations=args.rollouts,
        per_device_train_batch_size=args.per_device_batch,
        gradient_accumulation_steps=args.minibatch // per_step,
        steps_per_generation=generation_batch // per_step,
        temperature=0.7,
        max_completion_length=args.max_completion_length,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        weight_decay=0.01,
        epsilon=0.2,
        epsilon_high=0.24,
        delta=10.0,  # TRL's two-sided clip is the paper's dual clip c = 10
        beta=1e-3,
        use_bias_correction_kl=False,
        loss_type="dapo",  # token-mean over the minibatch's response tokens
        scale_rewards="group",
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        bf16=torch.cuda.is_available(),  # autocast; the weights stay float32
        gradient_checkpointing=True,
        use_vllm=args.use_vllm,
        vllm_mode="colocate",
        logging_steps=1,
        save_steps=args.save_steps,
        report_to=args.report_to,
        seed=args.seed,
    )


def kk_dataset(task, samples: list[dict], tokenizer):
    """TRL rows: the chat prompt (template applied here, ending in "<think>") and the columns the
    reward reads; TRL passes every column to the reward function."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": task.prompt(s, chat=True, tokenizer=tokenizer),
                "names": list(s["names"]),
                "solution": [bool(x) for x in s["solution"]],
            }
            for s in samples
        ]
    )


def evaluate(
    model, tokenizer, task, files: list[str], n: int, max_tokens: int, out_dir: Path
) -> dict[str, float]:
    """Greedy accuracy per file; responses are written for `pmalopti kk score`."""
    import torch
    from tqdm import tqdm

    model.eval()
    tokenizer.padding_side = "left"
    results = {}
    for file in files:
        samples = task.samples(path=file, n=n)
        prompts = [task.prompt(s, chat=True, tokenizer=tokenizer) for s in samples]
        responses = []
        for i in tqdm(range(0, len(prompts), 16), desc=Path(file).name):
            batch = tokenizer(prompts[i : i + 16], return_tensors="pt", padding=True)
            batch = batch.to(model.device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_tokens, do_sample=False)
            new = out[:, batch["input_ids"].shape[1] :]
            responses += tokenizer.batch_decode(new, skip_special_tokens=True)
        acc = sum(task.is_correct(r, s) for r, s in zip(responses, samples, strict=True)) / len(
            samples
        )
        results[Path(file).name] = acc
        path = out_dir / f"{Path(file).stem}.responses.jsonl"
        path.write_text("".join(json.dumps({"response": r}) + "\n" for r in responses))
    return results


def main(argv: list[str] | None = None) -> None:
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from pmalopti.integrations.trl import LoptiGRPOTrainer
    from pmalopti.runtime.hf import load_tokenizer
    from pmalopti.tasks import get_task, trl_reward

    args = parse_args(argv)
    state = PartialState()
    config = build_config(args, state.num_processes)
    resume = resume_checkpoint(args)
    tokenizer = load_tokenizer(args.model)
    tokenizer.padding_side = "left"
    task = get_task("kk", people=3, people_max=7)
    if args.train_file:
        samples = task.samples(path=args.train_file)
    else:
        samples = task.samples("train", n=args.train_n, seed=args.seed)
    # float32 master weights with bf16 autocast, as verl's FSDP actor: an lr of 1e-6 is below
    # bf16's resolution, so updates to bf16 weights would mostly round away.
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    trainer = LoptiGRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=trl_reward(task),
        args=config,
        train_dataset=kk_dataset(task, samples, tokenizer),
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    if args.eval_files and state.is_main_process:
        out = Path(args.output_dir) / "eval"
        out.mkdir(parents=True, exist_ok=True)
        model = trainer.accelerator.unwrap_model(trainer.model)
        acc = evaluate(
            model, tokenizer, task, args.eval_files, args.eval_n, args.max_completion_length, out
        )
        (out / "accuracy.json").write_text(json.dumps(acc, indent=2))
        print(json.dumps(acc, indent=2))


if __name__ == "__main__":
    main()
