"""The learning loop: a locally built base model and LoRA SFT runs on it.

Import-light on purpose: torch, transformers, TRL and PEFT load inside the functions that train.
"""
