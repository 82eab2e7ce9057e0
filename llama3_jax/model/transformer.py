"""The Llama 3 decoder: embedding, L pre-norm blocks stacked on a `layers` axis, norm, LM head.

    model = Transformer(SIZES["debug"], rngs=nnx.Rngs(0))
    logits_btv = model(tokens_bt)                            # one document per row
    logits_btv = model(tokens_bt, segment_ids=seg_bt)        # packed rows, document mask
    logits_btv, cache = model(tokens_bt, seg_bt, pos_bt, slot_bt, cache=cache)   # decoding

The blocks' parameters are stacked ([L, ...]) and run by `nnx.scan`, so compile time does not
grow with depth; `scan_layers=False` runs the same stacked parameters in a Python loop.
"""

import functools

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from flax import nnx

from llama3_jax.model import attention_ops
from llama3_jax.model.attention import Attention
from llama3_jax.model.config import ModelConfig
from llama3_jax.model.layers import RMSNorm, constrain, head_logits, param, rope_angles
from llama3_jax.model.mlp import MLP

_RESIDUAL = ("act_batch", "act_res_seq", "act_embed")   # the residual stream [B, T, D]
_BLOCK_IN = ("act_batch", "act_seq", "act_embed")       # normed input to attention and MLP


class Block(nnx.Module):
  """x + attention(norm(x)), then + mlp(norm(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config   # static: remat and kernel choices for runners of the stacked blocks
    dtype = jnp.dtype(config.param_dtype)
    self.attn_norm = RMSNorm(config.d_model, config.norm_eps, param_dtype=dtype, rngs=rngs)
    self.attn = Attention(config, rngs=rngs)
    self.mlp_norm = RMSNorm(config.d_model, config.norm_eps, param_dtype=dtype, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x_btd, rope, segment_bt, index_bt, cache=None, attend=None):
    """With a KV cache ((k, v) of this layer, the cache's segment ids): returns (x, (k, v)).
    `attend`: the attention kernel (Attention.__call__)."""
    h_btd = constrain(self.attn_norm(x_btd), _BLOCK_IN)
    attn = self.attn(h_btd, rope, segment_bt, index_bt, cache, attend)
    attn_btd, kv = attn if cache is not None else (attn, None)
    # Named in the residual stream's layout (split over tensor with sequence parallelism).
    attn_btd = checkpoint_name(constrain(attn_btd, _RESIDUAL), "attn_out")
    x_btd = constrain(x_btd + attn_btd, _RESIDUAL)
    h_btd = constrain(self.mlp_norm(x_btd), _BLOCK_IN)
    mlp_btd = checkpoint_name(self.mlp(h_btd), "mlp_out")
    x_btd = constrain(x_btd + mlp_btd, _RESIDUAL)
    return x_btd if cache is None else (x_btd, kv)


# remat="minimal" (MaxText's name): every matmul's output is kept, so backward recomputes no
# matmul, only the norms, RoPE and SwiGLU's product (and, with sequence parallelism, the gather
# of the normed inputs): q, k, v after RoPE, the attention output (flash attention's blocked
# output and log-sum-exp, which its backward reads; other kernels' output, whose forward
# backward then reruns), the attention block's output (x + attn is rebuilt from it), gate, up.
_MINIMAL = ("q", "k", "v", "attn_out", "gate", "up")
_MINIMAL_ATTENTION = {"blockwise": ("flash_out", "flash_lse")}


def kept_names(config: ModelConfig) -> tuple[str, ...] | None:
  """The named values backward keeps of a block under `config.remat` (() none: the block is
  recomputed from its input; None: everything, remat "none")."""
  if config.remat == "none":
    return None
  if config.remat == "save_names":
    return tuple(config.remat_names)
  if config.remat == "minimal":
    return _MINIMAL + _MINIMAL_ATTENTION.get(config.attention, ("attn_context",))
  return ()   # "full"


def remat_policy(config: ModelConfig):
  """The jax.checkpoint policy of `config.remat` for one block (remat "none": no checkpoint)."""
  return jax.checkpoint_policies.save_only_these_names(*kept_names(config))


def segment_positions(segment_bt: jax.Array) -> jax.Array:
  """Positions that restart at 0 where the segment id changes: [1,1,2,2,2] -> [0,1,0,1,2]."""
  index_bt = jnp.broadcast_to(jnp.arange(segment_bt.shape[1]), segment_bt.shape)
  starts_bt = jnp.concatenate(
      [jnp.ones_like(segment_bt[:, :1], bool), segment_bt[:, 1:] != segment_bt[:, :-1]], axis=1)
  start_index_bt = jax.lax.cummax(jnp.where(starts_bt, index_bt, 0), axis=1)
  return index_bt - start_index_bt


class Transformer(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    init = nnx.initializers.normal(config.init_std)
    V, D, dtype = config.vocab_size, config.d_model, jnp.dtype(config.param_dtype)
    self.embed_vd = param(rngs, init, (V, D), ("vocab", "embed"), dtype)

    @nnx.split_rngs(splits=config.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return Block(config, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm = RMSNorm(D, config.norm_eps, param_dtype=dtype, rngs=rngs)
    if not config.tie_embeddings:
      self.lm_head_dv = param(rngs, init, (D, V), ("embed", "vocab"), dtype)
    # The two seams a parallelism uses, set by llama3_jax/parallel/parallelize.py on the model a
    # step traces (never saved): `block_runner(blocks, x_btd, rope, segment_bt, index_bt,
    # attend) -> x_btd` runs the stacked blocks (e.g. as a pipeline over the stage axis);
    # `attention_kernel` replaces the attention kernel (e.g. under shard_map over the context
    # axis). None: this device runs everything (`_run_blocks`, `attention_ops.self_attention`).
    self.block_runner = None
    self.attention_kernel = None

  def __call__(self, tokens_bt, segment_ids=None, positions=None, indices=None, *,
               cache=None, logits_at=None, hidden: bool = False):
    """tokens [B, T] int -> logits [B, T, V] fp32.

    segment_ids [B, T]: tokens attend only within their own segment (document); ids must be
    non-negative (ids >= attention_ops.SHARED_PREFIX: a response sharing its prompt, see there;
    pass positions then). positions [B, T]: RoPE positions; by default they restart at 0 in each
    segment (0..T-1 without segment ids). indices [B, T]: each token's index in its packed row,
    which the causal mask compares; by default 0..T-1. Pass them (and positions) when the
    tokens come permuted, as in context parallelism's load-balanced order; the logits then come
    in the same permuted order, and attention takes no shortcut that assumes row order.

    cache: a KV cache (llama3_jax/infer/kv_cache.py: {"k", "v": [L, B, S, K, H], "segment":
    [B, S]}); the tokens are written at slots `indices` with `segment_ids` and attend to the
    whole cache. Returns (logits, new cache). logits_at [B, T'] (token places in the row): the
    LM head runs there only (a prefill needs the last prompt token's), logits [B, T', V].
    hidden: the final-normed hidden states [B, T, D] (or [B, T', D]) instead of logits.
    """
    c = self.config
    dtype = jnp.dtype(c.dtype)
    B, T = tokens_bt.shape
    if indices is not None and positions is None and segment_ids is not None:
      raise ValueError("Transformer got token indices (a permuted row) but no positions: "
                       "positions cannot be derived from permuted segment ids; compute them "
                       "with segment_positions before permuting")
    index_bt = (jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)) if indices is None
                else jnp.asarray(indices, jnp.int32))
    segment_bt = (jnp.zeros((B, T), jnp.int32) if segment_ids is None
                  else jnp.asarray(segment_ids, jnp.int32))
    if positions is None:
      positions = index_bt if segment_ids is None else segment_positions(segment_bt)
    rope = rope_angles(jnp.asarray(positions), c)

    # The lookup reads the table laid out like an activation (vocab-parallel, d_model whole), so
    # its backward scatter-add lands in that layout and is then reduce-scattered like any weight.
    embed_vd = constrain(self.embed_vd[...], ("act_vocab", "act_embed"))
    x_btd = constrain(jnp.take(embed_vd, tokens_bt, axis=0).astype(dtype), _RESIDUAL)
    if cache is not None:
      rows_bt = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
      cache = {**cache, "segment": cache["segment"].at[rows_bt, index_bt].set(segment_bt)}
      x_btd, (cache["k"], cache["v"]) = self._run_blocks(
          self.blocks, x_btd, rope, segment_bt, index_bt, kv=(cache["k"], cache["v"]),
          kv_segment_bs=cache["segment"])
    else:
      attend = self.attention_kernel or functools.partial(attention_ops.self_attention,
                                                          rows_in_order=indices is None)
      run = self.block_runner or self._run_blocks
      x_btd = run(self.blocks, x_btd, rope, segment_bt, index_bt, attend)
    if logits_at is not None:
      x_btd = jnp.take_along_axis(x_btd, logits_at[:, :, None], axis=1)
    x_btd = self.final_norm(x_btd)
    if hidden:
      return x_btd if cache is None else (x_btd, cache)
    if c.tie_embeddings:
      logits_btv = head_logits(x_btd, self.embed_vd[...], "vd", dtype)
    else:
      logits_btv = head_logits(x_btd, self.lm_head_dv[...], "dv", dtype)
    logits_btv = constrain(logits_btv, ("act_batch", "act_seq", "act_vocab"))
    return logits_btv if cache is None else (logits_btv, cache)

  def _run_blocks(self, blocks, x_btd, rope, segment_bt, index_bt, attend=None, *, kv=None,
                  kv_segment_bs=None):
    """The stacked blocks over x, on this device's share of the work (the default block
    runner); with `kv` (the cache's stacked (k, v) [L, B, S, K, H]), also the new (k, v)."""
    c = self.config
    if kv is not None:   # decoding: no backward pass, so no remat
      def apply_cached(block, x_btd, kv_layer):
        return block(x_btd, rope, segment_bt, index_bt, (kv_layer, kv_segment_bs))
      if c.scan_layers:
        scan = nnx.scan(apply_cached, in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0),
                        transform_metadata={nnx.PARTITION_NAME: "layers"})
        return scan(blocks, x_btd, kv)
      graphdef, state = nnx.split(blocks)
      layers = []
      for i in range(c.n_layers):
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
        x_btd, kv_layer = apply_cached(block, x_btd, jax.tree.map(lambda a: a[i], kv))
        layers.append(kv_layer)
      return x_btd, jax.tree.map(lambda *a: jnp.stack(a), *layers)

    def apply(block, x_btd):
      return block(x_btd, rope, segment_bt, index_bt, attend=attend)

    if c.remat != "none":
      apply = nnx.remat(apply, policy=remat_policy(c))

    if c.scan_layers:
      scan = nnx.scan(apply, in_axes=(0, nnx.Carry), out_axes=nnx.Carry,
                      transform_metadata={nnx.PARTITION_NAME: "layers"})
      return scan(blocks, x_btd)
    # Unrolled: the same stacked parameters, one layer slice at a time.
    graphdef, state = nnx.split(blocks)
    for i in range(c.n_layers):
      block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
      x_btd = apply(block, x_btd)
    return x_btd
