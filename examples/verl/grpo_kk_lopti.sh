#!/usr/bin/env bash
# GRPO + AR (alpha 0.3) + Lopti (eta 0.5) on Knights and Knaves with verl; needs GPUs, Ray, vLLM.
#
#   pip install 'pmalopti[verl]'          # verl 0.9.1 with the vLLM/torch/flash-attn it pins
#   pmalopti kk generate --people 3 --people-max 7 --n 5000 --seed 0 -o data/kk/train.parquet
#   for p in 3 4 5 6 7; do   # test sets (or the published K&K test files: VAL_DIR=...)
#     pmalopti kk generate --split test --people $p --n 100 -o data/kk/${p}ppl_test.parquet
#   done
#   bash examples/verl/grpo_kk_lopti.sh                       # paper settings (4 GPUs)
#   bash examples/verl/grpo_kk_lopti.sh actor_rollout_ref.actor.policy_loss.lopti_eta=0  # AR only
#
# Any extra argument is a Hydra override of examples/verl/grpo_kk_lopti.yaml.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="${MODEL:-Qwen/Qwen2.5-3B-Instruct}"
TRAIN="${TRAIN:-data/kk/train.parquet}"
VAL_DIR="${VAL_DIR:-data/kk}"
VAL="[${VAL_DIR}/3ppl_test.parquet,${VAL_DIR}/4ppl_test.parquet,${VAL_DIR}/5ppl_test.parquet,${VAL_DIR}/6ppl_test.parquet,${VAL_DIR}/7ppl_test.parquet]"

# verl imports this module on `import verl` in every process (driver, TaskRunner, workers):
# it registers the "pmalopti_ar" policy loss and the "pmalopti_lopti" trainer mode.
export VERL_USE_EXTERNAL_MODULES=pmalopti.integrations.verl

python3 -m verl.trainer.main_ppo \
  --config-path="${HERE}" --config-name=grpo_kk_lopti \
  data.train_files="${TRAIN}" \
  data.val_files="${VAL}" \
  actor_rollout_ref.model.path="${MODEL}" \
  reward.custom_reward_function.path="${HERE}/kk_reward.py" \
  +ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=pmalopti.integrations.verl \
  "$@"
