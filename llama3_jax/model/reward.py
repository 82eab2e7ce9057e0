"""The reward model of Llama 3 (report §4.1.2): the Llama backbone with a scalar head in place
of the LM head, one reward per position (a response's reward is read at its last token).

    model = RewardModel(config, rngs=nnx.Rngs(0))
    rewards_bt = model(tokens_bt, segment_ids, positions)

Its loss: llama3_jax/objectives/reward.py; scoring responses: llama3_jax/posttrain/reward.py.
"""

import jax.numpy as jnp
from flax import nnx

from llama3_jax.model.layers import param
from llama3_jax.model.transformer import Transformer


class RewardModel(nnx.Module):
  """Transformer backbone, final norm, then a scalar head [D]: one reward per position."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    self.config = config
    self.backbone = Transformer(config, rngs=rngs)
    self.head_d = param(rngs, nnx.initializers.normal(config.init_std), (config.d_model,),
                        ("embed",), jnp.dtype(config.param_dtype))

  def __call__(self, tokens_bt, segment_ids=None, positions=None, indices=None):
    """[B, T] fp32 rewards, one per position."""
    h_btd = self.backbone(tokens_bt, segment_ids, positions, indices, hidden=True)
    return jnp.einsum("btd,d->bt", h_btd.astype(jnp.float32), self.head_d[...].astype(
        jnp.float32))
