"""The built-in GRPO trainer (AR and Lopti): config, rollout, update."""
