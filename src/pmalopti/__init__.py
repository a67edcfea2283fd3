"""pmalopti: Pre-trained Model Averaging (PMA) and AR/Lopti for GRPO."""

__version__ = "0.1.0"
