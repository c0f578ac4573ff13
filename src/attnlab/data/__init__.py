"""Data: corpus reading and validation, tokenizers, synthetic tasks, the DataModule."""
