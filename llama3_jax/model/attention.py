"""Grouped-query self-attention with rotary embeddings and the document mask."""

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from flax import nnx

from llama3_jax.model import attention_ops
from llama3_jax.model.config import ModelConfig
from llama3_jax.model.layers import apply_rope, constrain, param


class Attention(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    init = nnx.initializers.normal(config.init_std)
    D, N, K, H = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
    dtype = jnp.dtype(config.param_dtype)
    self.wq_dnh = param(rngs, init, (D, N, H), ("embed", "heads", "head_dim"), dtype)
    self.wk_dkh = param(rngs, init, (D, K, H), ("embed", "kv_heads", "head_dim"), dtype)
    self.wv_dkh = param(rngs, init, (D, K, H), ("embed", "kv_heads", "head_dim"), dtype)
    self.wo_nhd = param(rngs, init, (N, H, D), ("heads", "head_dim", "embed"), dtype)

  def __call__(self, x_btd, rope, segment_bt, index_bt):
    """x [B, T, D]; rope = (cos, sin) [B, T, H/2]; segment ids and token indices [B, T]."""
    dtype = x_btd.dtype
    w = lambda p: p[...].astype(dtype)
    q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, w(self.wq_dnh))
    k_btkh = jnp.einsum("btd,dkh->btkh", x_btd, w(self.wk_dkh))
    v_btkh = jnp.einsum("btd,dkh->btkh", x_btd, w(self.wv_dkh))
    q_btnh = constrain(apply_rope(q_btnh, *rope), ("act_batch", "act_seq", "act_heads", None))
    k_btkh = constrain(apply_rope(k_btkh, *rope), ("act_batch", "act_seq", "act_kv_heads", None))
    v_btkh = constrain(v_btkh, ("act_batch", "act_seq", "act_kv_heads", None))

    out_btnh = attention_ops.self_attention(q_btnh, k_btkh, v_btkh, segment_bt, index_bt,
                                            self.config)
    out_btnh = checkpoint_name(out_btnh, "attn_context")
    return jnp.einsum("btnh,nhd->btd", out_btnh, w(self.wo_nhd))
