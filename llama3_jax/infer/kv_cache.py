"""The KV cache of decoding: keys and values of every layer, stacked like the layers.

    cache = init_cache(config, batch=8, max_len=256)     # {"k", "v": [L, B, S, K, H], "segment": [B, S]}
    logits_btv, cache = model(tokens_bt, segment_bt, positions_bt, slots_bt, cache=cache)

A token written at slot s of its row attends to the slots of the same segment at or before s
(the model's causal and document mask on slot indices); unwritten slots hold segment -1 and are
never attended to. Keys and values are kept in the model's compute dtype, sharded like the
attention activations: rows over data x fsdp, KV heads over tensor (replicated where tensor >
KV heads, as in training).
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from llama3_jax.sharding.rules import logical_to_spec

# Logical axes of the cache's arrays (the sharding rules map them to mesh axes).
CACHE_AXES = {"k": (None, "act_batch", None, "act_kv_heads", None),
              "v": (None, "act_batch", None, "act_kv_heads", None),
              "segment": ("act_batch", None)}
EMPTY = -1   # the segment id of a slot nothing was written to


def init_cache(config, batch: int, max_len: int, dtype=None) -> dict:
  L, K, H = config.n_layers, config.n_kv_heads, config.head_dim
  dtype = jnp.dtype(dtype or config.dtype)
  return {"k": jnp.zeros((L, batch, max_len, K, H), dtype),
          "v": jnp.zeros((L, batch, max_len, K, H), dtype),
          "segment": jnp.full((batch, max_len), EMPTY, jnp.int32)}


def cache_shardings(mesh, rules) -> dict:
  return {name: NamedSharding(mesh, logical_to_spec(axes, rules))
          for name, axes in CACHE_AXES.items()}


def bytes_per_token(config, dtype=None) -> int:
  """Cache bytes one token of one row holds: keys and values of every layer."""
  return 2 * config.n_layers * config.n_kv_heads * config.head_dim * jnp.dtype(
      dtype or config.dtype).itemsize


def take_rows(cache: dict, rows_b: jax.Array) -> dict:
  """The cache of rows `rows_b`, in that order: finished rows dropped into a smaller batch
  bucket, or a prompt's row copied for each of its K samples (Llama 3's prefix sharing)."""
  return {"k": jnp.take(cache["k"], rows_b, axis=1), "v": jnp.take(cache["v"], rows_b, axis=1),
          "segment": jnp.take(cache["segment"], rows_b, axis=0)}
