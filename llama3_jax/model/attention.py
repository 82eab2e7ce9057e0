"""Grouped-query self-attention with rotary embeddings and the document mask.

With a KV cache (decoding, llama3_jax/infer/kv_cache.py) the new tokens' keys and values are
written into the cache at their slots (`index_bt`: each token's slot in its row) and the
queries attend to every slot of the cache, masked by the cache's per-slot segment ids (unwritten
slots and padding never match) and causally by slot.
"""

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

  def _qkv_fused(self, x_btd, w):
    """q, k and v from one matmul (Megatron's fused QKV), so that backward sums their input
    gradients before reducing them over `tensor`: each KV head's weights sit beside its group's
    query heads ([D, K, G + 2, H]), so a split of the heads stays a split of whole groups."""
    D, K, G, H = self.config.d_model, self.config.n_kv_heads, self.config.n_groups, \
        self.config.head_dim
    w_dkgh = jnp.concatenate([w(self.wq_dnh).reshape(D, K, G, H), w(self.wk_dkh)[:, :, None],
                              w(self.wv_dkh)[:, :, None]], axis=2)
    out_btkgh = jnp.einsum("btd,dkgh->btkgh", x_btd, w_dkgh)
    B, T = x_btd.shape[:2]
    return (out_btkgh[:, :, :, :G].reshape(B, T, K * G, H), out_btkgh[:, :, :, G],
            out_btkgh[:, :, :, G + 1])

  def __call__(self, x_btd, rope, segment_bt, index_bt, cache=None, attend=None):
    """x [B, T, D]; rope = (cos, sin) [B, T, H/2]; segment ids and token indices [B, T].

    attend: the kernel, (q, k, v, segment_bt, index_bt, config) -> out [B, T, N, H]; default
    `attention_ops.self_attention` (the one `config.attention` names).

    cache: None (training), or (k, v) [B, S, K, H] and the cache's segment ids [B, S] already
    holding this call's tokens; then returns (out, (k, v)) with this call's keys and values
    written at slots `index_bt`.
    """
    dtype = x_btd.dtype
    w = lambda p: p[...].astype(dtype)
    if self.config.fused_matmuls:
      q_btnh, k_btkh, v_btkh = self._qkv_fused(x_btd, w)
    else:
      q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, w(self.wq_dnh))
      k_btkh = jnp.einsum("btd,dkh->btkh", x_btd, w(self.wk_dkh))
      v_btkh = jnp.einsum("btd,dkh->btkh", x_btd, w(self.wv_dkh))
    q_btnh = constrain(apply_rope(q_btnh, *rope), ("act_batch", "act_seq", "act_heads", None))
    k_btkh = constrain(apply_rope(k_btkh, *rope), ("act_batch", "act_seq", "act_kv_heads", None))
    v_btkh = constrain(v_btkh, ("act_batch", "act_seq", "act_kv_heads", None))
    q_btnh, k_btkh, v_btkh = (checkpoint_name(q_btnh, "q"), checkpoint_name(k_btkh, "k"),
                              checkpoint_name(v_btkh, "v"))

    if cache is None:
      attend = attend or attention_ops.self_attention
      out_btnh = attend(q_btnh, k_btkh, v_btkh, segment_bt, index_bt, self.config)
      # Heads split like q's, so that backward brings the output's gradient to that layout
      # before attention (with sequence parallelism: one all-gather), never the reverse.
      out_btnh = constrain(out_btnh, ("act_batch", "act_seq", "act_heads", None))
      out_btnh = checkpoint_name(out_btnh, "attn_context")
      return jnp.einsum("btnh,nhd->btd", out_btnh, w(self.wo_nhd))
    (k_bskh, v_bskh), kv_segment_bs = cache
    rows_bt = jnp.broadcast_to(jnp.arange(x_btd.shape[0])[:, None], index_bt.shape)
    k_bskh = k_bskh.at[rows_bt, index_bt].set(k_btkh.astype(k_bskh.dtype))
    v_bskh = v_bskh.at[rows_bt, index_bt].set(v_btkh.astype(v_bskh.dtype))
    cache_names = ("act_batch", None, "act_kv_heads", None)
    k_bskh, v_bskh = constrain(k_bskh, cache_names), constrain(v_bskh, cache_names)
    kv_index_bs = jnp.broadcast_to(jnp.arange(k_bskh.shape[1], dtype=jnp.int32),
                                   kv_segment_bs.shape)
    out_btnh = attention_ops.local_attention(q_btnh, k_bskh.astype(dtype), v_bskh.astype(dtype),
                                             segment_bt, kv_segment_bs, index_bt, kv_index_bs,
                                             self.config)
    return jnp.einsum("btnh,nhd->btd", out_btnh, w(self.wo_nhd)), (k_bskh, v_bskh)
