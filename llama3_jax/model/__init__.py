"""The Llama 3 model: `ModelConfig`, the size table `SIZES`, `Transformer`, `RewardModel`.

Model code names logical axes only ("embed", "act_batch", ...); llama3_jax/sharding/rules.py
maps them to mesh axes, and a parallelism enters through the model's two seams
(llama3_jax/parallel/parallelize.py).
"""

from flax import nnx

from llama3_jax.model.config import ModelConfig, RopeScaling, SIZES, ffn_dim
from llama3_jax.model.reward import RewardModel
from llama3_jax.model.transformer import Transformer

__all__ = ["ModelConfig", "RewardModel", "RopeScaling", "SIZES", "Transformer", "ffn_dim",
           "new_module"]


def new_module(config: ModelConfig, kind: str = "lm"):
  """A new model of `kind`, as checkpoints record it: "lm" (Transformer) or "reward"
  (RewardModel)."""
  if kind == "reward":
    return RewardModel(config, rngs=nnx.Rngs(0))
  return Transformer(config, rngs=nnx.Rngs(0))
