"""The Llama 3 model: `ModelConfig`, the size table `SIZES`, and `Transformer`."""

from llama3_jax.model.config import ModelConfig, RopeScaling, SIZES, ffn_dim
from llama3_jax.model.transformer import Transformer

__all__ = ["ModelConfig", "RopeScaling", "SIZES", "Transformer", "ffn_dim"]
