"""LoptiGRPOTrainer in two CPU processes (torchrun, gloo): the metrics are gathered over ranks
and the ranks stay in sync. Slow (two process start-ups): run with `-m slow`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("trl")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from datasets import Dataset
    from trl import GRPOTrainer
    from pmalopti.integrations.trl import LoptiGRPOConfig, LoptiGRPOTrainer
    from pmalopti.models.tiny import tiny_model_and_tokenizer

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    model, tok = tiny_model_and_tokenizer(
        seed=0, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1
    )
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    local = []  # this rank's share of each generation batch
    orig = GRPOTrainer._generate_and_score_completions

    def capture(self, inputs):
        o = orig(self, inputs)
        local.append({"mask": o["completion_mask"].tolist(),
                      "old": o["old_per_token_logps"].tolist()})
        return o

    GRPOTrainer._generate_and_score_completions = capture
    args = LoptiGRPOConfig(
        output_dir=out, per_device_train_batch_size=2, num_generations=4,
        max_completion_length=6, max_steps=4, learning_rate=1e-2, temperature=0.7, seed=0,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, ar_alpha=0.3, lopti_eta=0.5, num_iterations=2, beta=0.0,
    )
    ds = Dataset.from_dict({"prompt": [f"{a} + 3 =" for a in range(16)]})
    reward = lambda completions, **kw: [sum(c.isdigit() for c in s) / 4 for s in completions]
    tr = LoptiGRPOTrainer(model=model, processing_class=tok, reward_funcs=reward, args=args,
                          train_dataset=ds)
    tr.train()
    torch.save({k: v.detach() for k, v in tr.model.state_dict().items()},
               os.path.join(out, f"weights{rank}.pt"))
    with open(os.path.join(out, f"local{rank}.json"), "w") as f:
        json.dump({"gens": local, "world": tr.accelerator.num_processes,
                   "log": tr.state.log_history}, f)
    """
)


@pytest.mark.slow
def test_two_processes_gather_lopti_metrics_over_ranks_and_stay_in_sync(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"local{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    logged = [
        h["lopti/low_token_fraction"] for h in ranks[0]["log"] if "lopti/low_token_fraction" in h
    ]
    assert len(logged) == len(ranks[0]["gens"]) == len(ranks[1]["gens"]) > 0
    for g, value in enumerate(logged):
        low = total = 0
        for r in ranks:
            mask = torch.tensor(r["gens"][g]["mask"]).bool()
            p = torch.tensor(r["gens"][g]["old"]).exp()
            low, total = low + int((mask & (p < 0.5)).sum()), total + int(mask.sum())
        assert value == pytest.approx(low / total)
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt", weights_only=True) for r in (0, 1))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
