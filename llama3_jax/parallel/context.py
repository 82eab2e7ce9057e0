"""Context parallelism: one sequence split over the `context` mesh axis (report §3.3.2).

    batch = reorder_batch(batch, context)               # once per batch, in the train step
    model.attention_kernel = context_kernel(mesh, rules, "all_gather")   # parallelize() does
    loss = loss_sums(model, batch)                      # every layer's attention: shard_map

Llama 3's design, for 128K-token sequences on CP=16:
- Load balance. The sequence is cut into 2*C chunks and rank i holds chunks i and 2C-1-i, so
  every rank gets one early and one late chunk and the same share of the causal mask's work.
  `reorder_batch` permutes every [B, T] array of a batch this way once; each token keeps its
  true index in the row (`indices`) and its RoPE position (`positions`, computed from the
  segment ids BEFORE permuting). Everything outside attention works token by token, and the
  loss is a sum over tokens, so the permuted order is never undone in training; `restore_order`
  undoes it where outputs must come in order (e.g. logits for inspection).
- All-gather schedule (Llama 3's): K and V, only the KV heads (small with GQA), are
  all-gathered over `context`, together with their segment ids and indices; each rank attends
  its local queries to all keys with the causal AND document mask evaluated on true indices and
  segment ids. With the blockwise kernel the scores are O(local queries x block); the gathered
  K/V are O(T) per rank. Backward: autodiff turns the all-gather into a reduce-scatter of dK/dV.
- Ring schedule (for when the gathered K/V do not fit): K/V blocks travel round the ring with
  `ppermute`; each step computes one block with the flash kernel while the next block is in
  flight (the send is issued before the compute and nothing in the compute waits for it, so
  XLA's async collective-permute overlaps them), and partial results merge by log-sum-exp.
  The backward pass goes round the ring again, dK/dV accumulators travelling with their block.
  Memory is O(local) throughout. With the 2C-chunk order every ring step carries the same
  causal work on every rank (two chunk pairs' worth). Results equal the all-gather schedule.

Heads stay split over `tensor` inside each context shard, the batch over `data` and `fsdp`: the
shard_map is manual over every mesh axis, with specs read from the logical rules, so each rank
runs the single-device kernel on its own heads and rows, and the only collectives are the ones
over `context` written here.
"""

import functools
import math

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np
from flax import linen
from jax.sharding import PartitionSpec

from llama3_jax.model import attention_ops
from llama3_jax.model.transformer import segment_positions
from llama3_jax.sharding.mesh import context_chunk_problem
from llama3_jax.sharding.rules import logical_to_spec, without_axis

SCHEDULES = ("all_gather", "ring")


# --- Load-balanced token order --------------------------------------------------------------

def context_axis(rules) -> str | None:
  """The mesh axis the sequence of attention activations (`act_seq`) is split over."""
  axis = logical_to_spec(("act_seq",), rules)[0]
  if isinstance(axis, tuple):
    if len(axis) > 1:
      raise ValueError(f"act_seq maps to several mesh axes {axis}; context parallelism needs "
                       "one (e.g. ('act_seq', 'context'))")
    axis = axis[0] if axis else None
  return axis


def context_size(mesh, rules) -> int:
  axis = context_axis(rules)
  return 1 if axis is None else mesh.shape[axis]


def check_seq_len(seq_len: int, context: int) -> None:
  problem = context_chunk_problem(seq_len, context)
  if problem:
    raise ValueError(f"Context parallelism: {problem}")


def chunk_order(context: int) -> list[int]:
  """Chunk i of the permuted row is chunk `chunk_order(C)[i]` of the original: rank r holds
  chunks r and 2C-1-r. C=2: [0, 3, 1, 2]."""
  return [c for r in range(context) for c in (r, 2 * context - 1 - r)]


def balanced_order(seq_len: int, context: int) -> np.ndarray:
  """Token permutation: C=2, T=8: [0 1 6 7 | 2 3 4 5] (rank 0 | rank 1)."""
  check_seq_len(seq_len, context)
  return np.arange(seq_len).reshape(2 * context, -1)[chunk_order(context)].reshape(-1)


def reorder_batch(batch: dict, context: int) -> dict:
  """The batch in load-balanced order, with `positions` and `indices` (true token indices).

  Positions are computed before permuting (from segment ids: they restart at 0 per document)
  when the batch has none. Every [B, T] array is permuted the same way.
  """
  B, T = batch["inputs"].shape
  check_seq_len(T, context)
  batch = dict(batch)
  index_bt = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  if batch.get("positions") is None:
    segments = batch.get("segment_ids")
    batch["positions"] = (index_bt if segments is None
                          else segment_positions(jnp.asarray(segments, jnp.int32)))
  batch["indices"] = index_bt
  order = balanced_order(T, context)
  return {name: _permute(x, order) if getattr(x, "shape", ())[:2] == (B, T) else x
          for name, x in batch.items()}


def restore_order(x, context: int, axis: int = 1):
  """Undoes `reorder_batch` along `axis` (e.g. logits [B, T, V] back into token order)."""
  return _permute(x, np.argsort(balanced_order(x.shape[axis], context)), axis)


def _permute(x, order: np.ndarray, axis: int = 1):
  # A gather with constant indices: XLA all-gathers each [B, T] array along the sequence once
  # (a few bytes per token) and keeps its own slice; per-chunk slices would cost a collective
  # per chunk.
  return jnp.take(jnp.asarray(x), order, axis=axis)


# --- Attention under shard_map --------------------------------------------------------------

def context_kernel(mesh, rules, schedule: str = "all_gather"):
  """The attention kernel of a mesh with a context axis (`context_attention` on it), for
  `Transformer.attention_kernel`; None when the context axis has size 1."""
  if schedule not in SCHEDULES:
    raise ValueError(f"context schedule {schedule!r}; use one of {SCHEDULES}")
  if context_size(mesh, rules) == 1:
    return None
  return functools.partial(context_attention, mesh=mesh, rules=rules, schedule=schedule)


def context_attention(q_btnh, k_btkh, v_btkh, segment_bt, index_bt, config, *, mesh, rules,
                      schedule: str = "all_gather"):
  """Self-attention with the sequence split over the context axis; [B, T, ...] in and out.

  `index_bt` holds each token's true index in its row, so any token order gives the exact
  result; the order of `reorder_batch` also balances the work.
  """
  axis = context_axis(rules)
  size = mesh.shape[axis]
  check_seq_len(q_btnh.shape[1], size)
  # Attention runs inside the pipelined blocks, where `stage` (and the pipeline's replica axes,
  # llama3_jax/parallel/pipeline.py) are vmapped dimensions' that vmap adds to these specs,
  # never the rows': the rules in effect there leave them out.
  active = linen.get_logical_axis_rules() or rules
  spec = lambda names: without_axis(logical_to_spec(names, active), "stage")
  q_spec = spec(("act_batch", "act_seq", "act_heads", None))
  kv_spec = spec(("act_batch", "act_seq", "act_kv_heads", None))
  id_spec = spec(("act_batch", "act_seq"))
  heads_axes = q_spec[2]
  if kv_spec[2] != heads_axes:
    # Fewer KV heads than head shards (e.g. 8 KV heads on tensor=16): give each shard a copy
    # of the one KV head its query heads use, so that every shard holds whole GQA groups.
    shards = math.prod(mesh.shape[a] for a in _axes(heads_axes))
    copies = shards // k_btkh.shape[2]
    k_btkh, v_btkh = (jnp.repeat(x, copies, axis=2) for x in (k_btkh, v_btkh))
    kv_spec = PartitionSpec(*kv_spec[:2], heads_axes, None)

  if schedule == "all_gather":
    body = functools.partial(_gathered_attention, axis=axis, config=config)
  else:
    body = functools.partial(_ring_attention, axis=axis, size=size, config=config)
  return jax.shard_map(body, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, id_spec, id_spec),
                       out_specs=q_spec,
                       # Inside the pipeline's vmap over stages, vmap adds `stage` to the specs
                       # of the batched dimension; the replication check of the unbatched body
                       # cannot see that, so it is off there (the tests compare the results).
                       check_vma=mesh.shape.get("stage", 1) == 1)(
                           q_btnh, k_btkh, v_btkh, segment_bt, index_bt)


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return entry if isinstance(entry, tuple) else (entry,)


def _gathered_attention(q_btnh, k_btkh, v_btkh, segment_bt, index_bt, *, axis, config):
  """Per rank: local queries [B, T/C, N, H] against all keys [B, T, K, H] (Llama 3)."""
  gather = lambda x: jax.lax.all_gather(x, axis, axis=1, tiled=True)
  return attention_ops.local_attention(q_btnh, gather(k_btkh), gather(v_btkh), segment_bt,
                                       gather(segment_bt), index_bt, gather(index_bt), config)


def _ring_attention(q_btnh, k_btkh, v_btkh, segment_bt, index_bt, *, axis, size, config):
  """Per rank: local queries against the C local K/V blocks as they pass round the ring."""
  q = attention_ops.query_blocks(q_btnh, segment_bt, index_bt, k_btkh.shape[2],
                                 config.attention_block_q)
  kv = attention_ops.kv_blocks(k_btkh, v_btkh, segment_bt, index_bt, config.attention_block_kv)
  out = _ring(q, kv, axis, size)
  return attention_ops.from_query_blocks(out, q_btnh.shape[1]).astype(q_btnh.dtype)


def _shift(tree, axis, size):
  """Every rank sends to the next one round the ring (and receives from the previous)."""
  perm = [(i, (i + 1) % size) for i in range(size)]
  return jax.tree.map(lambda x: jax.lax.ppermute(x, axis, perm), tree)


def _merge(out, lse, block_out, block_lse):
  """Combines two partial softmax-attention results by their log-sum-exps (-inf: empty)."""
  block_lse = jnp.where(block_lse == jnp.inf, -jnp.inf, block_lse)   # flash's "saw nothing"
  new = jnp.logaddexp(lse, block_lse)
  safe = jnp.where(jnp.isfinite(new), new, 0.0)
  out = out * jnp.exp(lse - safe)[..., None] + block_out * jnp.exp(block_lse - safe)[..., None]
  return out, new


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _ring(q, kv, axis, size):
  return _ring_fwd(q, kv, axis, size)[0]


def _ring_fwd(q, kv, axis, size):
  """q = (q, segment, index) blocks, kv = (k, v, segment, index) blocks -> out fp32."""
  q = (q[0], *attention_ops.tie_ids(q[0], q[1:]))   # see tie_ids: no O(T^2) hoisted masks
  kv = (*kv[:2], *attention_ops.tie_ids(q[0], kv[2:]))

  def attend(kv, out, lse):
    return _merge(out, lse, *attention_ops.flash_forward(*q, *kv))

  def step(carry, _):
    kv, out, lse = carry
    next_kv = _shift(kv, axis, size)   # in flight while this block is computed
    return (next_kv, *attend(kv, out, lse)), None

  out = jnp.zeros_like(q[0], jnp.float32)
  lse = jnp.full_like(q[0][..., 0], -jnp.inf, jnp.float32)
  (last_kv, out, lse), _ = jax.lax.scan(step, (kv, out, lse), length=size - 1)
  out, lse = attend(last_kv, out, lse)
  lse = jnp.where(jnp.isfinite(lse), lse, jnp.inf)   # rows that saw nothing: p = 0 in backward
  # Named as the flash kernel names them: remat="minimal" keeps them (no second ring forward).
  out, lse = checkpoint_name(out, "flash_out"), checkpoint_name(lse, "flash_lse")
  return out, (q, kv, out, lse)


def _ring_bwd(axis, size, residuals, d_out):
  """Round the ring again: dq stays, dK/dV accumulate with their block and come home."""
  q, kv, out, lse = residuals

  def grads(kv, dkv, dq):
    dq_b, dk_b, dv_b = attention_ops.flash_backward(*q, *kv, out, lse, d_out)
    return (dkv[0] + dk_b, dkv[1] + dv_b), dq + dq_b

  def step(carry, _):
    kv, dkv, dq = carry
    next_kv = _shift(kv, axis, size)   # prefetched while this block's gradients are computed
    dkv, dq = grads(kv, dkv, dq)
    return (next_kv, _shift(dkv, axis, size), dq), None

  zeros = jnp.zeros_like(kv[0], jnp.float32)
  dq = jnp.zeros_like(q[0], jnp.float32)
  (last_kv, dkv, dq), _ = jax.lax.scan(step, (kv, (zeros, zeros), dq), length=size - 1)
  dkv, dq = grads(last_kv, dkv, dq)
  dk, dv = _shift(dkv, axis, size)   # the C-th hop brings each accumulator back to its owner
  return ((dq.astype(q[0].dtype), None, None),
          (dk.astype(kv[0].dtype), dv.astype(kv[1].dtype), None, None))


_ring.defvjp(_ring_fwd, _ring_bwd)
