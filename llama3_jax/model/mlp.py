"""SwiGLU feed-forward network: down(silu(x @ gate) * (x @ up))."""

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from flax import nnx

from llama3_jax.model.config import ModelConfig
from llama3_jax.model.layers import constrain, param


class MLP(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(config.init_std)
    self.fused = config.fused_matmuls
    D, F, dtype = config.d_model, config.ffn_dim, jnp.dtype(config.param_dtype)
    self.w_gate_df = param(rngs, init, (D, F), ("embed", "mlp"), dtype)
    self.w_up_df = param(rngs, init, (D, F), ("embed", "mlp"), dtype)
    self.w_down_fd = param(rngs, init, (F, D), ("mlp", "embed"), dtype)

  def __call__(self, x_btd):
    dtype = x_btd.dtype
    gate_df, up_df = self.w_gate_df[...].astype(dtype), self.w_up_df[...].astype(dtype)
    if self.fused:   # one matmul: backward sums the two input gradients before reducing them
      gate_up_btsf = jnp.einsum("btd,dsf->btsf", x_btd, jnp.stack([gate_df, up_df], axis=1))
      gate_btf, up_btf = gate_up_btsf[:, :, 0], gate_up_btsf[:, :, 1]
    else:
      gate_btf = jnp.einsum("btd,df->btf", x_btd, gate_df)
      up_btf = jnp.einsum("btd,df->btf", x_btd, up_df)
    gate_btf, up_btf = checkpoint_name(gate_btf, "gate"), checkpoint_name(up_btf, "up")
    h_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("act_batch", "act_seq", "act_mlp"))
    return jnp.einsum("btf,fd->btd", h_btf, self.w_down_fd[...].astype(dtype))
