"""TRL, verl and HF Trainer hooks (PMACallback): the only modules that import those frameworks."""
