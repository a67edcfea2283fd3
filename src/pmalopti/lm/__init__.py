"""Language-model training: one loop, pretrain, SFT, data, WSD schedule."""
