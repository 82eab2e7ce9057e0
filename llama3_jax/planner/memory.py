"""Per-device memory of a training layout, by component, for the stage that needs the most.

    parts = memory(model, layout)          # {"parameters": bytes, ..., "total": bytes}

What is counted (bytes per device; D d_model, F FFN, N/K query/KV heads, H head dim, t tensor,
c context):
- parameters (fp32 masters as `param_dtype` says), Adam's two moments and the optimizer's
  update (a gradient-sized tree while AdamW applies), all split over fsdp x tensor x stage
  (and context, in this project's step: `weight_shards`);
- gradients: in Llama 3's FSDP mode accumulated in the gathered layout (split over tensor and
  stage only) and reduce-scattered once per step; in ZeRO-3 kept as FSDP shards;
- weights gathered by FSDP: Llama 3's mode keeps every weight of the stage gathered for the
  whole step; ZeRO-3 holds two layers at a time (the one computing, the one prefetched);
- activations: what backward keeps per layer and token under the remat policy, times the
  layers and micro-batches alive at once under the pipeline schedule (`activation_bytes`);
  context parallelism's all-gathered K/V are kept per layer for backward;
- logits and loss: fp32 logits of the rows the head sees at once, and their gradient.
The embedding and the head sit on every stage in this project's circular pipeline (their rows
split over the stage axis) and on the first / last stage only under 1F1B (Llama 3's layout).
"""

import numpy as np

from llama3_jax.parallel.pipeline import Schedule
from llama3_jax.planner.layout import (Layout, pipeline_replicas, stage_layers, stage_slots,
                                       weight_shards)

# What XLA keeps per layer and token for backward in this project's step (remat "none"), in
# copies of each dimension: measured from XLA:CPU's memory analysis of the compiled train
# step (jax 0.10.2) by growing one dimension at a time (tests/planner/test_calibration.py
# checks the result on other layouts), fp32 only: on GPU in bf16 they are an estimate. XLA
# keeps more than the matmul inputs (which arrays was not traced: likely silu's sigmoid and
# product, the norms' scalings, q/k before and after RoPE).
# Of the d_model-sized copies, two are the normed inputs the matmuls read: gathered to full D
# even with sequence parallelism; the rest follow the residual stream's split.
XLA_COPIES = {"ffn": 6.0, "d_model_gathered": 2.0, "d_model": 4.4, "q_heads": 3.0,
              "kv_heads": 2.0}
# One layer's attention backward holds about four [queries, key block] fp32 score arrays
# (scores, probabilities and their gradients) at its peak.
XLA_SCORE_COPIES = 4
# Live copies of the [tokens, vocab / t] fp32 logits: the logits and their gradient.
LOGIT_COPIES = 2


def _bytes(dtype: str) -> int:
  return np.dtype(dtype).itemsize


def layer_params(model, t: int) -> float:
  """Parameters of one block on one tensor rank (before fsdp): q, k, v, o, MLP, two norms."""
  D, N, K, H, F = model.d_model, model.n_heads, model.n_kv_heads, model.head_dim, model.ffn_dim
  kv_split = t if K % t == 0 else 1   # tensor > KV heads: every rank keeps whole KV heads
  return 2 * D * N * H / t + 2 * D * K * H / kv_split + 3 * D * F / t + 2 * D


def table_params(model, t: int) -> float:
  """Embedding or LM head ([V, D]) on one tensor rank."""
  return model.vocab_size * model.d_model / t


def tokens_per_micro_batch(layout: Layout) -> float:
  """Tokens of one micro-batch on one device (rows over data x fsdp, sequence over context)."""
  return layout.rows / (layout.replicas * layout.micro_batches) * layout.seq_len \
      / layout.size("context")


def layer_activation_bytes(model, layout: Layout, policy: str | None = None) -> float:
  """Bytes one layer keeps for backward, per token on one device, under a remat policy."""
  policy = policy or layout.remat
  D, N, K, H, F = model.d_model, model.n_heads, model.n_kv_heads, model.head_dim, model.ffn_dim
  t = layout.size("tensor")
  a = _bytes(model.dtype)
  resid = D / (t if layout.sequence_parallel else 1)   # the residual stream (x, x + attn)
  kv_heads = K / t if K % t == 0 else K
  if policy == "full":        # the block's input only
    return resid * a
  if policy == "save_names":  # block input + the named outputs (transformer.py)
    named = {"attn_out": resid, "mlp_out": resid, "attn_context": N * H / t}
    return (resid + sum(named.get(n, 0) for n in model.remat_names)) * a
  if policy == "minimal" and layout.step == "xla":
    # The names transformer.kept_names keeps: the input x and the attention block's output
    # (residual layout), q, k, v, the attention output, gate, up, and flash attention's
    # log-sum-exp. Other kernels' probabilities and context parallelism's gathered K/V are
    # recomputed, not kept.
    elems = 2 * resid + 2 * N * H / t + 2 * kv_heads * H + 2 * F / t
    return elems * a + (N / t * 4 if model.attention == "blockwise" else 0.0)
  if policy == "none" and layout.step == "xla":
    c = XLA_COPIES
    elems = c["ffn"] * F / t + c["d_model_gathered"] * D + c["d_model"] * resid \
        + c["q_heads"] * N * H / t + c["kv_heads"] * kv_heads * H
    return elems * a + context_kv_bytes(model, layout)
  if policy == "minimal":     # x, x + attn, q, k, v, attention output, gate, up
    elems = 2 * resid + 2 * N * H / t + 2 * kv_heads * H + 2 * F / t
  else:   # "none": every matmul input and what the nonlinearities need: x and x + attn
    # (residual), both normed inputs (gathered to full D for the matmuls), q, k, v, the
    # attention output, gate, up and silu(gate) * up.
    elems = 2 * resid + 2 * D + 2 * N * H / t + 2 * kv_heads * H + 3 * F / t
  extra = 0.0
  if model.attention == "reference":   # fp32 probabilities [N/t, T_local, S] and the mask
    extra += N / t * layout.seq_len * 4 + layout.seq_len
  else:                                 # blockwise / flash: the log-sum-exp per head
    extra += N / t * 4
  return elems * a + extra + context_kv_bytes(model, layout)


def context_kv_bytes(model, layout: Layout) -> float:
  """Per local token: the K and V of the other context ranks, all-gathered and kept."""
  c, t, K, H = layout.size("context"), layout.size("tensor"), model.n_kv_heads, model.head_dim
  if c == 1:
    return 0.0
  kv_heads = K / t if K % t == 0 else K
  return 2 * kv_heads * H * (c - 1) * _bytes(model.dtype)


def layer_micro_batches_alive(model, layout: Layout) -> list[float]:
  """Per stage: layers x micro-batches whose activations are alive at the peak."""
  S, V, M = layout.size("stage"), layout.repeats, layout.micro_batches
  layers = stage_layers(model.n_layers, S)
  if S == 1:
    return [float(layers[0])]   # micro-batches run one after another
  out = []
  for r, n in enumerate(layers):
    if V == 1:
      alive = min(M, S - r) * n
    else:   # Megatron's interleaved warm-up: 2(S - r - 1) + (V - 1) S chunk forwards, + 1
      alive = min(M * V, 2 * (S - r - 1) + (V - 1) * S + 1) * n / V
    out.append(alive)
  return out


def activation_bytes(model, layout: Layout) -> list[float]:
  """Per stage: the bytes of activations alive at once."""
  tokens = tokens_per_micro_batch(layout)
  S = layout.size("stage")
  if S > 1 and layout.schedule == "circular":
    # Every iteration's stage input stays (the carry of the scan), with the buffer of
    # micro-batches waiting for their next trip; and what the remat policy keeps of each of
    # the chunk's layer slots, every iteration (idle ones included: the stages run in
    # lockstep), the first slot's input being the stage input.
    iterations = Schedule(S, layout.repeats, layout.micro_batches).iterations
    resid = model.d_model / (layout.size("tensor") if layout.sequence_parallel else 1)
    slices = iterations + max(layout.micro_batches, S)
    if pipeline_replicas(layout):
      # The buffer on every stage: the last stage's output broadcast to it, the slot it
      # replaces, and their gradients (XLA:CPU's memory analysis, tests/planner).
      slices += 4
    a = _bytes(model.dtype)
    stage_in = slices * tokens * resid * a
    slots = stage_slots(model, layout) // layout.repeats   # per chunk
    kept = iterations * tokens * (slots * layer_activation_bytes(model, layout) - resid * a)
    return [stage_in + kept + _working_bytes(model, layout, tokens)] * S
  kept = layer_activation_bytes(model, layout)
  return [n * tokens * kept + _working_bytes(model, layout, tokens)
          for n in layer_micro_batches_alive(model, layout)]


def _working_bytes(model, layout: Layout, tokens: float) -> float:
  """Backward's peak beyond what is kept: the layer being recomputed (policies that recompute
  matmuls rebuild one layer at a time) or one layer's attention backward, the larger: the
  attention backward runs inside the recomputation."""
  working = attention_working_bytes(model, layout)
  if layout.remat in ("none", "minimal"):
    return working
  return max(tokens * layer_activation_bytes(model, layout, "none"), working)


def attention_working_bytes(model, layout: Layout) -> float:
  """The score arrays of one layer's attention backward (XLA's step; flash kernels keep them
  in on-chip memory)."""
  if layout.step != "xla":
    return 0.0
  rows = layout.rows / (layout.replicas * layout.micro_batches)
  queries = layout.seq_len / layout.size("context")
  block = min(layout.seq_len, model.attention_block_kv)
  if model.attention == "reference":
    block = layout.seq_len
  heads = model.n_heads / layout.size("tensor")
  return XLA_SCORE_COPIES * rows * heads * queries * block * 4


def memory(model, layout: Layout) -> dict[str, float]:
  """Bytes per device by component, for the stage whose total is largest."""
  t, S, fsdp = layout.size("tensor"), layout.size("stage"), weight_shards(model, layout)
  p = _bytes(model.param_dtype)
  g = _bytes(layout.gather_dtype or model.param_dtype)
  layers = stage_layers(model.n_layers, S)
  tables = 1 if model.tie_embeddings else 2
  acts = activation_bytes(model, layout)
  best = None
  for r in range(S):
    if S == 1 or layout.schedule == "circular":
      n_tables = tables
    else:
      n_tables = (r == 0) + (r == S - 1 and not model.tie_embeddings)
    gathered = layers[r] * layer_params(model, t) + n_tables * table_params(model, t) \
        + model.d_model
    sharded = gathered / fsdp
    parts = {
        "parameters": sharded * p,
        "optimizer state": 2 * sharded * p,
        "optimizer update": sharded * p,
        "gradients": (gathered if layout.fsdp_mode == "llama3" else sharded) * p,
        "gathered weights": gathered_weights(model, layout, gathered) * g,
        "activations": acts[r],
        "logits and loss": logits_bytes(model, layout, r),
    }
    parts["total"] = sum(parts.values())
    if best is None or parts["total"] > best["total"]:
      best = {**parts, "stage": r}
  return best


def gathered_weights(model, layout: Layout, gathered: float) -> float:
  """Elements of FSDP-gathered weights alive at the peak (none without FSDP unless the gather
  casts to another dtype: then the cast copy)."""
  if weight_shards(model, layout) == 1:
    same = (layout.gather_dtype or model.param_dtype) == model.param_dtype
    return 0.0 if same else gathered
  if layout.fsdp_mode == "llama3":   # XLA's step: + one layer's gradient before its reduction
    return gathered + (layer_params(model, layout.size("tensor")) if layout.step == "xla" else 0)
  # ZeRO-3: the layer computing and the next one; XLA's step also holds the layer's gathered
  # gradient before its reduce-scatter.
  return (3 if layout.step == "xla" else 2) * layer_params(model, layout.size("tensor"))


def logits_bytes(model, layout: Layout, stage: int) -> float:
  t, S = layout.size("tensor"), layout.size("stage")
  if S > 1 and layout.schedule == "1f1b":
    if stage != S - 1:
      return 0.0
    tokens = tokens_per_micro_batch(layout)   # the head runs one micro-batch at a time
  else:   # rows split over every axis but tensor, all at once
    tokens = layout.batch_tokens / (layout.n_gpus / t)
    if S == 1:
      tokens /= layout.micro_batches
  return LOGIT_COPIES * tokens * model.vocab_size / t * 4


def gib(n: float) -> float:
  return n / 2**30

