"""Hugging Face interop: `llama3_jax.hf.load(path)` and `llama3_jax.hf.save(model, config, path)`."""

from llama3_jax.checkpoint.hf import config_from_hf, config_to_hf, load, save

__all__ = ["config_from_hf", "config_to_hf", "load", "save"]
