"""Hugging Face interop: `llama3_jax.hf.load(path)` and `llama3_jax.hf.save(model, config, path)`,
with the tokenizer: `save(..., tokenizer=...)` / `save_tokenizer`, read back by `load_tokenizer`."""

from llama3_jax.checkpoint.hf import (config_from_hf, config_to_hf, load, load_tokenizer, save,
                                      save_tokenizer)

__all__ = ["config_from_hf", "config_to_hf", "load", "load_tokenizer", "save", "save_tokenizer"]
