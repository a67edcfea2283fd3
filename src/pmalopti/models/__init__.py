"""Tiny model and tokenizer builders."""
