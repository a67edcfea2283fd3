#!/usr/bin/env bash
# The rl_effect comparison at a larger scale on one GPU, in <= 10 minutes (NOT RUN YET).
#
# Sized for an H200; no downloads: the model is built from a config and trained here.
#
# NOT RUN YET: no GPU was available in the session that wrote it. Its timings are estimates.
#
# Same driver, stages and summarizer as the CPU experiment (round 2: SFT on imperfect
# demonstrations, half the answers with every carry dropped), with:
#   - a ~19M-parameter model (hidden 384, 8 layers, 6 heads) instead of 1M, bfloat16 autocast;
#   - 3-4 digit sums instead of 2-3 (longer answers: more carry digits, more low-probability tokens);
#   - pre-training 400 steps (run.py's PRETRAIN_STEP) of 64 x 64 tokens, SFT 3,000 steps of 256
#     (a checkpoint every 250);
#   - the start model picked by `--base-step auto` (carry.py's pick_start on the SFT scan: of the
#     checkpoints at 30-50 % held-out accuracy, the one answering the most carry sums with the
#     no-carry sum); if none is in the band the script stops there and says so;
#   - GRPO 32 prompts x 8 samples, 200 steps, 4 variants x 3 seeds, 4 runs at a time on the GPU.
# Results go to $RUNS/report (summary.json, results.md, figures), never into the committed files.
#
#   bash experiments/rl_effect/gpu_protocol.sh                # ~9 min on one H200 (estimate)
#   RUNS=/tmp/rl_gpu SEEDS="0 1" bash experiments/rl_effect/gpu_protocol.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/rl_effect_gpu}
SEEDS=${SEEDS:-"0 1 2"}
BASE_STEP=${BASE_STEP:-auto}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
mkdir -p "$RUNS"
start=$(date +%s)
# Every stage is bounded so the whole script stays under 10 minutes; a stage that overruns is cut
# and reported rather than silently extending the run.
timeout 570 python experiments/rl_effect/run.py --runs "$RUNS" --seeds $SEEDS --parallel 4 \
  --base-step "$BASE_STEP" --noise 0.5 --no-report-docs --digits 3 4 \
  --pretrain-set model.hidden_size=384 model.num_layers=8 model.num_heads=6 model.num_kv_heads=2 \
      train.batch_size=64 train.device=cuda train.dtype=bfloat16 optim.lr=1e-3 \
  --sft-set train.batch_size=256 train.steps=3000 \
      train.device=cuda train.dtype=bfloat16 optim.lr=5e-4 \
  --grpo-set model.device=cuda model.autocast=bfloat16 \
      rollout.prompts_per_step=32 \
      rollout.max_new_tokens=7 algo.minibatch_size=128 algo.micro_batch_size=32 \
  || echo "run.py stopped early (exit $?): the report covers the runs that finished"
python experiments/rl_effect/run.py --runs "$RUNS" --stage report --no-report-docs --digits 3 4 \
  --noise 0.5 || true
echo "total $(( $(date +%s) - start )) s; results in $RUNS/report"
