"""Attention kernels on plain arrays: a reference path and a memory-efficient blockwise path.

Both take q [B, T, N, H], k and v [B, S, K, H] (grouped-query attention: each of the K KV heads
serves G = N / K query heads) and evaluate the causal AND document mask on explicit token
indices and segment ids: query t sees key s iff `q_index[t] >= kv_index[s]` and
`q_segment[t] == kv_segment[s]`. Explicit indices let a caller hand in any subset of a sequence
(context parallelism holds non-contiguous chunks) and still get the true mask.

Shared prefixes: a segment id `r * SHARED_PREFIX + p` (r >= 1, 0 <= p < SHARED_PREFIX) is
response r of the prompt whose segment id is p: its tokens see that prompt's tokens as well as
their own, never another response's. So a prompt and all its responses (DPO's chosen and
rejected, a reward model's ranked answers) sit in one packed row and the prompt is encoded
once (`shared_prefix_segments`). Ordinary ids (< SHARED_PREFIX) mean what they always did.

- `reference_attention`: `jax.nn.dot_product_attention` with a dense [T, S] mask.
- `cudnn_attention`: the same call with `implementation="cudnn"`: cuDNN's fused flash attention
  on NVIDIA GPUs (bf16/fp16). The mask goes in as a bias; in the model's own calls (tokens in
  row order) `is_causal` also lets cuDNN skip the blocks above the diagonal. Where cuDNN is
  absent (CPU, TPU, ROCm) `attention="cudnn"` falls back to `reference_attention` with a
  warning naming why (`cudnn_unsupported`), so one config runs everywhere.
- `blockwise_attention`: online softmax over key blocks (flash attention, in pure JAX, so it runs
  on every backend) with a hand-written backward pass that recomputes scores from the saved
  log-sum-exp. Memory is O(block_q x block_kv) per step, never O(T x S), forward and backward;
  blocks with nothing to attend to (above the causal diagonal, other documents) are skipped.

The blocked layouts and the flash forward / backward passes are public (`query_blocks`,
`kv_blocks`, `flash_forward`, `flash_backward`) so that ring attention
(llama3_jax/parallel/context.py) can run them on one key block at a time.

`self_attention` is what the model calls: the kernel its config names (`KERNELS`), unless a
parallelism installed another in the model (`Transformer.attention_kernel`).
"""

import warnings

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp


SHARED_PREFIX = 1 << 20   # segment ids below this are documents; see the module docstring


def shared_prefix_segments(prompt_id, response):
  """The segment id of response `response` (1, 2, ...) of the prompt with segment id
  `prompt_id` (works on arrays)."""
  return response * SHARED_PREFIX + prompt_id


def attention_mask(q_segment_bt, kv_segment_bs, q_index_bt, kv_index_bs):
  """[B, T, S] bool: causal on token indices, and the same document (or a response's prompt)."""
  causal = q_index_bt[:, :, None] >= kv_index_bs[:, None, :]
  q_seg, kv_seg = q_segment_bt[:, :, None], kv_segment_bs[:, None, :]
  # (Padded blocks carry negative ids, which are never responses.)
  prompt = jnp.where(q_seg >= SHARED_PREFIX, q_seg % SHARED_PREFIX, -1)
  return causal & ((q_seg == kv_seg) | (prompt == kv_seg))


def reference_attention(q_btnh, k_bskh, v_bskh, q_segment_bt, kv_segment_bs, q_index_bt,
                        kv_index_bs):
  """Dense attention through JAX's own kernel; softmax in fp32."""
  mask_b1ts = attention_mask(q_segment_bt, kv_segment_bs, q_index_bt, kv_index_bs)[:, None]
  return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_b1ts)


def cudnn_unsupported(dtype, platform: str | None = None) -> str | None:
  """Why cuDNN's fused attention cannot run here (None: it can). `platform`: default JAX's."""
  platform = jax.default_backend() if platform is None else platform
  if platform != "gpu":
    return f"the platform is {platform!r}, not an NVIDIA GPU"
  if "cuda" not in jax.devices()[0].client.platform_version.lower():
    return "the GPU is not an NVIDIA (CUDA) one"
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    return f"the activations are {jnp.dtype(dtype).name}; cuDNN's kernel takes bf16 or fp16"
  return None


_WARNED = set()


def cudnn_attention(q_btnh, k_bskh, v_bskh, q_segment_bt, kv_segment_bs, q_index_bt,
                    kv_index_bs, *, rows_in_order: bool = False):
  """cuDNN flash attention with the same mask as `reference_attention`, or that function (and a
  warning, once per reason) where cuDNN cannot run. `rows_in_order`: query t and key t are the
  same token and indices increase along the row, so the causal mask is the row order's and
  cuDNN may skip the blocks above the diagonal."""
  reason = cudnn_unsupported(q_btnh.dtype)
  if reason is not None:
    if reason not in _WARNED:
      _WARNED.add(reason)
      warnings.warn(f"attention='cudnn' falls back to 'reference': {reason}", stacklevel=2)
    return reference_attention(q_btnh, k_bskh, v_bskh, q_segment_bt, kv_segment_bs,
                               q_index_bt, kv_index_bs)
  mask_b1ts = attention_mask(q_segment_bt, kv_segment_bs, q_index_bt, kv_index_bs)[:, None]
  return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_b1ts,
                                      is_causal=rows_in_order, implementation="cudnn")


def blockwise_attention(q_btnh, k_bskh, v_bskh, q_segment_bt, kv_segment_bs, q_index_bt,
                        kv_index_bs, *, block_q: int = 512, block_kv: int = 512):
  """Flash attention in pure JAX; equals `reference_attention` (values and gradients)."""
  q = query_blocks(q_btnh, q_segment_bt, q_index_bt, k_bskh.shape[2], block_q)
  kv = kv_blocks(k_bskh, v_bskh, kv_segment_bs, kv_index_bs, block_kv)
  out = _flash(*q, *kv)                                    # [nq, B, K, G, bq, H]
  return from_query_blocks(out, q_btnh.shape[1])


# --- Blocked layouts -------------------------------------------------------------------------
# q [nq, B, K, G, bq, H]; k, v [nk, B, K, bk, H]; ids [n, B, block]. Sequences are padded to
# whole blocks; padded queries and keys get segment ids no real token has (ids are non-negative
# and the two pads differ), so padded keys are never attended to and padded query rows see
# nothing.
_LOWEST = jnp.iinfo(jnp.int32).min


def _pad(x, n, value=0):
  return jnp.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def _id_blocks(ids_bt, n, block, pad_value):
  ids = _pad(ids_bt.astype(jnp.int32), n * block - ids_bt.shape[1], pad_value)
  return ids.reshape(ids.shape[0], n, block).transpose(1, 0, 2)


def query_blocks(q_btnh, segment_bt, index_bt, n_kv_heads: int, block: int):
  """(q [nq, B, K, G, bq, H], segment [nq, B, bq], index [nq, B, bq])."""
  B, T, N, H = q_btnh.shape
  bq = min(block, T)
  nq = -(-T // bq)
  q = _pad(q_btnh, nq * bq - T).reshape(B, nq, bq, n_kv_heads, N // n_kv_heads, H)
  return (q.transpose(1, 0, 3, 4, 2, 5), _id_blocks(segment_bt, nq, bq, _LOWEST),
          _id_blocks(index_bt, nq, bq, 0))


def kv_blocks(k_bskh, v_bskh, segment_bs, index_bs, block: int):
  """(k, v [nk, B, K, bk, H], segment [nk, B, bk], index [nk, B, bk])."""
  B, S, K, H = k_bskh.shape
  bk = min(block, S)
  nk = -(-S // bk)
  blocked = lambda x: _pad(x, nk * bk - S).reshape(B, nk, bk, K, H).transpose(1, 0, 3, 2, 4)
  return (blocked(k_bskh), blocked(v_bskh), _id_blocks(segment_bs, nk, bk, _LOWEST + 1),
          _id_blocks(index_bs, nk, bk, 0))


def from_query_blocks(out, T: int):
  """[nq, B, K, G, bq, H] -> [B, T, N, H] (padding dropped)."""
  nq, B, K, G, bq, H = out.shape
  return out.transpose(1, 0, 4, 2, 3, 5).reshape(B, nq * bq, K * G, H)[:, :T]


# --- Flash attention on blocked layouts ------------------------------------------------------

def _block_mask(q_seg, kv_seg, q_idx, kv_idx):
  """[B, 1, 1, bq, bk] mask of one (query block, key block) pair."""
  return attention_mask(q_seg, kv_seg, q_idx, kv_idx)[:, None, None]


def _varying(tree, *refs):
  """`tree` typed as varying over every mesh axis that any of `refs` varies over.

  Inside shard_map, scan carries and cond branches must agree on which manual mesh axes a value
  varies over; initial carries made from constants vary over none. A no-op outside shard_map.
  """
  axes = frozenset().union(*(_vma(r) for r in jax.tree.leaves(refs)))
  def cast(x):
    missing = tuple(sorted(axes - _vma(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x
  return jax.tree.map(cast, tree)


def _vma(x) -> frozenset:
  """The manual mesh axes `x` varies over (jax 0.10: `aval.mat.varying`; others: `aval.vma`)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)
  return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _scores(q, k):
  """q [B, K, G, bq, H], k [B, K, bk, H] -> scaled scores [B, K, G, bq, bk] in fp32."""
  s = jnp.einsum("bkgqh,bksh->bkgqs", q, k, preferred_element_type=jnp.float32)
  return s * (q.shape[-1] ** -0.5)


def flash_forward(q, q_seg, q_idx, k, v, kv_seg, kv_idx):
  """Blocked attention: out [nq, B, K, G, bq, H] in fp32 and the log-sum-exp [nq, B, K, G, bq].

  Rows that see no key (padding; or every key of this block masked, in ring attention) get
  out = 0 and lse = +inf, so that the backward pass gives them p = 0.
  """

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
    init = _varying(init, qb, q_seg_b, q_idx_b, k, v, kv_seg, kv_idx)
    (m, l, acc), _ = jax.lax.scan(kv_step, init, (k, v, kv_seg, kv_idx))
    seen = l > 0
    out = acc / jnp.where(seen, l, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
    return out, lse

  return jax.lax.map(one_q_block, (q, q_seg, q_idx))


def flash_backward(q, q_seg, q_idx, k, v, kv_seg, kv_idx, out, lse, d_out):
  """(dq, dk, dv) in fp32 for the keys given, from the FINAL out and lse of each query row.

  Because p is recomputed from the final lse, calling this on one key block at a time and
  summing dq gives the full gradient (ring attention's backward pass).
  """
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

      skip = lambda c: (c, _varying(jnp.zeros(qb.shape, jnp.float32), c, qb, kb, vb, dob))
      return jax.lax.cond(mask.any(), update, skip, carry)

    zeros_kv = _varying(jnp.zeros(kb.shape, jnp.float32), q, kb, vb, d_out, lse, q_seg,
                        kv_seg_b, q_idx, kv_idx_b)
    (dk, dv), dq_blocks = jax.lax.scan(q_step, (zeros_kv, zeros_kv),
                                       (q, q_seg, q_idx, d_out, lse, delta))
    return dq + dq_blocks, (dk, dv)

  dq = _varying(jnp.zeros(q.shape, jnp.float32), q, k, v, d_out, lse, q_seg, kv_seg)
  dq, (dk, dv) = jax.lax.scan(one_kv_block, dq,
                              (k, v, kv_seg, kv_idx))
  return dq, dk, dv


def tie_ids(q, ids):
  """`ids` passed through one optimization barrier with `q`, so that JAX sees them as depending
  on q. Differentiating a scan over layers, JAX hoists work that depends only on loop-invariant
  values (the segment ids and token indices are the same for every layer) out of the loop: it
  would compute every (query block, key block) mask of the flash loops up front and keep them
  all, O(T^2) memory. Tied to q, the masks stay inside the loops, block by block."""
  return jax.lax.optimization_barrier((q, ids))[1]


@jax.custom_vjp
def _flash(q, q_seg, q_idx, k, v, kv_seg, kv_idx):
  return flash_forward(q, q_seg, q_idx, k, v, kv_seg, kv_idx)[0].astype(q.dtype)


def _flash_fwd(q, q_seg, q_idx, k, v, kv_seg, kv_idx):
  q_seg, q_idx, kv_seg, kv_idx = tie_ids(q, (q_seg, q_idx, kv_seg, kv_idx))
  out, lse = flash_forward(q, q_seg, q_idx, k, v, kv_seg, kv_idx)
  # Named so that a remat policy can keep them (transformer.remat_policy's "minimal"): then
  # backward never reruns the flash forward.
  out, lse = checkpoint_name(out.astype(q.dtype), "flash_out"), checkpoint_name(lse, "flash_lse")
  return out, (q, q_seg, q_idx, k, v, kv_seg, kv_idx, out, lse)


def _flash_bwd(residuals, d_out):
  q, q_seg, q_idx, k, v, kv_seg, kv_idx, out, lse = residuals
  dq, dk, dv = flash_backward(q, q_seg, q_idx, k, v, kv_seg, kv_idx, out, lse, d_out)
  return (dq.astype(q.dtype), None, None, dk.astype(k.dtype), dv.astype(v.dtype), None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


# --- The model's entry point ----------------------------------------------------------------

def self_attention(q_btnh, k_btkh, v_btkh, segment_bt, index_bt, config, *,
                   rows_in_order: bool = True):
  """Causal, document-masked self-attention with the kernel `config.attention` names.

  `rows_in_order`: the tokens come in row order (no explicit indices), so a kernel may take the
  row order for the causal order (`cudnn_attention`'s shortcut). A parallelism that replaces
  this (context parallelism's shard_map) does so through `Transformer.attention_kernel`
  (llama3_jax/parallel/parallelize.py), with the same signature less `rows_in_order`.
  """
  return local_attention(q_btnh, k_btkh, v_btkh, segment_bt, segment_bt, index_bt, index_bt,
                         config, rows_in_order=rows_in_order)


def _cudnn(q, k, v, q_seg, kv_seg, q_idx, kv_idx, config, rows_in_order):
  return cudnn_attention(q, k, v, q_seg, kv_seg, q_idx, kv_idx, rows_in_order=rows_in_order)


def _blockwise(q, k, v, q_seg, kv_seg, q_idx, kv_idx, config, rows_in_order):
  return blockwise_attention(q, k, v, q_seg, kv_seg, q_idx, kv_idx,
                             block_q=config.attention_block_q, block_kv=config.attention_block_kv)


def _reference(q, k, v, q_seg, kv_seg, q_idx, kv_idx, config, rows_in_order):
  return reference_attention(q, k, v, q_seg, kv_seg, q_idx, kv_idx)


# The kernels `ModelConfig.attention` chooses from, by name: a new kernel is one entry here.
KERNELS = {"reference": _reference, "blockwise": _blockwise, "cudnn": _cudnn}


def local_attention(q_btnh, k_bskh, v_bskh, q_segment_bt, kv_segment_bs, q_index_bt,
                    kv_index_bs, config, *, rows_in_order: bool = False):
  """Queries against the keys given, with the kernel and block sizes of `config`.
  `rows_in_order`: see `cudnn_attention` (only that kernel uses it)."""
  return KERNELS[config.attention](q_btnh, k_bskh, v_bskh, q_segment_bt, kv_segment_bs,
                                   q_index_bt, kv_index_bs, config, rows_in_order)
