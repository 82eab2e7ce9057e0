"""Hugging Face interop: `llama3_jax.hf.load(path)` and `llama3_jax.hf.save(model, config, path)`,
with the tokenizer: `save(..., tokenizer=...)` / `save_tokenizer`, read back by `load_tokenizer`;
`load(path, mesh=mesh)` and `read_params(path, target)` shard the model as they read it."""

from llama3_jax.checkpoint.hf import (config_from_hf, config_to_hf, load, load_tokenizer,
                                      read_config, read_params, save, save_tokenizer)

__all__ = ["config_from_hf", "config_to_hf", "load", "load_tokenizer", "read_config",
           "read_params", "save", "save_tokenizer"]
