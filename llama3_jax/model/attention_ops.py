"""Attention kernels on plain arrays: a reference path and a memory-efficient blockwise path.

Both take q [B, T, N, H], k and v [B, S, K, H] (grouped-query attention: each of the K KV heads
serves G = N / K query heads) and evaluate the causal AND document mask on explicit token
indices and segment ids: query t sees key s iff `q_index[t] >= kv_index[s]` and
`q_segment[t] == kv_segment[s]`. Explicit indices let a caller hand in any subset of a sequence
(context parallelism holds non-contiguous chunks) and still get the true mask.

- `reference_attention`: `jax.nn.dot_product_attention` with a dense [T, S] mask.
- `blockwise_attention`: online softmax over key blocks (flash attention, in pure JAX, so it runs
  on every backend) with a hand-written backward pass that recomputes scores from the saved
  log-sum-exp. Memory is O(block_q x block_kv) per step, never O(T x S), forward and backward;
  blocks with nothing to attend to (above the causal diagonal, other documents) are skipped.
"""

import functools

import jax
import jax.numpy as jnp


def attention_mask(q_segment_bt, kv_segment_bs, q_index_bt, kv_index_bs):
  """[B, T, S] bool: causal on token indices, and the same document."""
  causal = q_index_bt[:, :, None] >= kv_index_bs[:, None, :]
  same_doc = q_segment_bt[:, :, None] == kv_segment_bs[:, None, :]
  return causal & same_doc


def reference_attention(q_btnh, k_bskh, v_bskh, q_segment_bt, kv_segment_bs, q_index_bt,
                        kv_index_bs):
  """Dense attention through JAX's own kernel; softmax in fp32."""
  mask_b1ts = attention_mask(q_segment_bt, kv_segment_bs, q_index_bt, kv_index_bs)[:, None]
  return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_b1ts)


def blockwise_attention(q_btnh, k_bskh, v_bskh, q_segment_bt, kv_segment_bs, q_index_bt,
                        kv_index_bs, *, block_q: int = 512, block_kv: int = 512):
  """Flash attention in pure JAX; equals `reference_attention` (values and gradients)."""
  B, T, N, H = q_btnh.shape
  S, K = k_bskh.shape[1], k_bskh.shape[2]
  G = N // K
  bq, bk = min(block_q, T), min(block_kv, S)
  nq, nk = -(-T // bq), -(-S // bk)
  # Pad to whole blocks. Padded keys and queries get segment ids no real token has (ids are
  # non-negative), so padded keys are never attended to and padded query rows are dropped.
  lowest = jnp.iinfo(jnp.int32).min
  pad_t, pad_s = nq * bq - T, nk * bk - S

  def pad(x, n, value=0):
    return jnp.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2), constant_values=value)

  # Blocked layouts: q [nq, B, K, G, bq, H]; k, v [nk, B, K, bk, H]; ids [n, B, block].
  q = pad(q_btnh, pad_t).reshape(B, nq, bq, K, G, H).transpose(1, 0, 3, 4, 2, 5)
  k = pad(k_bskh, pad_s).reshape(B, nk, bk, K, H).transpose(1, 0, 3, 2, 4)
  v = pad(v_bskh, pad_s).reshape(B, nk, bk, K, H).transpose(1, 0, 3, 2, 4)
  blocks = lambda x, n, b: x.reshape(B, n, b).transpose(1, 0, 2)
  q_seg = blocks(pad(q_segment_bt.astype(jnp.int32), pad_t, lowest), nq, bq)
  kv_seg = blocks(pad(kv_segment_bs.astype(jnp.int32), pad_s, lowest + 1), nk, bk)
  q_idx = blocks(pad(q_index_bt.astype(jnp.int32), pad_t), nq, bq)
  kv_idx = blocks(pad(kv_index_bs.astype(jnp.int32), pad_s), nk, bk)

  out = _flash(q, k, v, q_seg, kv_seg, q_idx, kv_idx)   # [nq, B, K, G, bq, H]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(B, nq * bq, N, H)
  return out[:, :T]


def _block_mask(q_seg, kv_seg, q_idx, kv_idx):
  """[B, 1, 1, bq, bk] mask of one (query block, key block) pair."""
  return attention_mask(q_seg, kv_seg, q_idx, kv_idx)[:, None, None]


def _scores(q, k):
  """q [B, K, G, bq, H], k [B, K, bk, H] -> scaled scores [B, K, G, bq, bk] in fp32."""
  s = jnp.einsum("bkgqh,bksh->bkgqs", q, k, preferred_element_type=jnp.float32)
  return s * (q.shape[-1] ** -0.5)


def _forward(q, k, v, q_seg, kv_seg, q_idx, kv_idx):
  """Returns out [nq, B, K, G, bq, H] and the log-sum-exp [nq, B, K, G, bq] (fp32)."""

  def one_q_block(args):
    qb, q_seg_b, q_idx_b = args

    def kv_step(carry, kv):
      kb, vb, kv_seg_b, kv_idx_b = kv
      mask = _block_mask(q_seg_b, kv_seg_b, q_idx_b, kv_idx_b)

      def update(carry):
        m, l, acc = carry                                    # running max, sum, numerator
        s = _scores(qb, kb)
        m_new = jnp.maximum(m, jnp.max(jnp.where(mask, s, -jnp.inf), axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing seen yet
        p = jnp.where(mask, jnp.exp(s - m_safe[..., None]), 0.0)
        rescale = jnp.exp(m - m_safe)
        l = l * rescale + p.sum(-1)
        pv = jnp.einsum("bkgqs,bksh->bkgqh", p.astype(vb.dtype), vb,
                        preferred_element_type=jnp.float32)
        return m_new, l, acc * rescale[..., None] + pv

      return jax.lax.cond(mask.any(), update, lambda c: c, carry), None

    stats_shape = qb.shape[:-1]
    init = (jnp.full(stats_shape, -jnp.inf, jnp.float32), jnp.zeros(stats_shape, jnp.float32),
            jnp.zeros(qb.shape, jnp.float32))
    (m, l, acc), _ = jax.lax.scan(kv_step, init, (k, v, kv_seg, kv_idx))
    seen = l > 0
    out = acc / jnp.where(seen, l, 1.0)[..., None]
    # Rows that saw nothing (padding) get lse = +inf, so the backward pass gives them p = 0.
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
    return out.astype(qb.dtype), lse

  return jax.lax.map(one_q_block, (q, q_seg, q_idx))


@jax.custom_vjp
def _flash(q, k, v, q_seg, kv_seg, q_idx, kv_idx):
  return _forward(q, k, v, q_seg, kv_seg, q_idx, kv_idx)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, q_idx, kv_idx):
  out, lse = _forward(q, k, v, q_seg, kv_seg, q_idx, kv_idx)
  return out, (q, k, v, q_seg, kv_seg, q_idx, kv_idx, out, lse)


def _flash_bwd(residuals, d_out):
  """Flash-attention backward: per key block, loop over query blocks and recompute p."""
  q, k, v, q_seg, kv_seg, q_idx, kv_idx, out, lse = residuals
  # delta = rowsum(dO * O) = rowsum(P * dP): the softmax Jacobian's correction term.
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

  def one_kv_block(dq, kv):
    kb, vb, kv_seg_b, kv_idx_b = kv

    def q_step(carry, qs):
      qb, q_seg_b, q_idx_b, dob, lse_b, delta_b = qs
      mask = _block_mask(q_seg_b, kv_seg_b, q_idx_b, kv_idx_b)

      def update(carry):
        dk, dv = carry
        p = jnp.where(mask, jnp.exp(_scores(qb, kb) - lse_b[..., None]), 0.0)
        dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p.astype(dob.dtype), dob,
                             preferred_element_type=jnp.float32)
        dp = jnp.einsum("bkgqh,bksh->bkgqs", dob, vb, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_b[..., None]) * (qb.shape[-1] ** -0.5)
        dqb = jnp.einsum("bkgqs,bksh->bkgqh", ds.astype(kb.dtype), kb,
                         preferred_element_type=jnp.float32)
        dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds.astype(qb.dtype), qb,
                             preferred_element_type=jnp.float32)
        return (dk, dv), dqb

      skip = lambda c: (c, jnp.zeros(qb.shape, jnp.float32))
      return jax.lax.cond(mask.any(), update, skip, carry)

    zeros_kv = jnp.zeros(kb.shape, jnp.float32)
    (dk, dv), dq_blocks = jax.lax.scan(q_step, (zeros_kv, zeros_kv),
                                       (q, q_seg, q_idx, d_out, lse, delta))
    return dq + dq_blocks, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(one_kv_block, jnp.zeros(q.shape, jnp.float32),
                              (k, v, kv_seg, kv_idx))
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
