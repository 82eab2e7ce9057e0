"""Hugging Face directories in and out: weights (weights.py) and the tokenizer (tokenizer.py).

    from llama3_jax.checkpoint import hf
    config, model = hf.load("/models/Meta-Llama-3.1-8B")
    hf.save(model, config, "/tmp/exported", tokenizer="tokenizer.model")
    tokenizer = hf.load_tokenizer("/tmp/exported")
"""

from llama3_jax.checkpoint.hf.tokenizer import load_tokenizer, save_tokenizer
from llama3_jax.checkpoint.hf.weights import (config_from_hf, config_to_hf, load, read_config,
                                              read_params, save)

__all__ = ["config_from_hf", "config_to_hf", "load", "load_tokenizer", "read_config",
           "read_params", "save", "save_tokenizer"]
