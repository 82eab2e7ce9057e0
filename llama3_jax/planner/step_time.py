"""Step time of a training layout: compute at a stated efficiency, every collective over the
link it crosses, what overlaps, and the pipeline bubble; out come TFLOP/s per GPU and MFU.

    t = step_time(model, layout, get_hardware("h100"))
    t["mfu"], t["tflops_per_gpu"], t["collectives"]       # [Traffic(axis, op, bytes, ...)]

Model FLOPs are `llama3_jax.train.metrics.flops_per_token` (6N + causal attention), the count
the launcher's MFU uses, so predicted and measured MFU mean the same thing. Collective volumes
are payloads: the bytes of the whole tensor a collective gathers or reduces over its group
(what `collective_payload` reads from compiled HLO); the time on the wire is payload x
(n - 1) / n for all-gather and reduce-scatter, twice that for all-reduce, payload for a
point-to-point send, over NVLink when the axis fits inside a node and the network otherwise.
"""

from typing import NamedTuple

from llama3_jax.parallel.pipeline import Schedule
from llama3_jax.planner.layout import Layout, stage_layers
from llama3_jax.planner.memory import _bytes, layer_params, table_params
from llama3_jax.sharding.mesh import AXES
from llama3_jax.train.metrics import flops_per_token

# The one free constant: the fraction of the dense bf16 peak that a transformer step's
# kernels sustain between collectives (large bf16 GEMMs reach ~65-75% of the data-sheet peak
# on Hopper; norms, RoPE, SwiGLU, softmax and the loss are memory-bound and launch gaps add
# up). An assumption, the same for every layout and GPU, not fitted per row; BENCHMARKS.md
# shows how Table 4's predictions move with it.
COMPUTE_EFFICIENCY = 0.50
# Causal flash attention (forward + backward) runs at about this fraction of a large GEMM's
# rate: FlashAttention-3 (Shah et al. 2024, H100 bf16, head dim 128) reaches ~500-600 TFLOP/s
# against ~700-750 for cuBLAS GEMMs; the masked diagonal blocks and the softmax cost the rest.
ATTENTION_EFFICIENCY = 0.75
# Large-message collectives reach ~80% of the link rate (NCCL's bus bandwidth on NVLink and
# on 400 Gb/s InfiniBand / RoCE, as nccl-tests typically report it).
LINK_EFFICIENCY = 0.80
# What overlaps (named so the model's assumptions are visible):
# - tensor parallel all-reduces / all-gathers / reduce-scatters sit between the matmuls that
#   produce and consume them: exposed (Megatron without async TP; XLA's SPMD partitioner).
# - context parallel K/V all-gathers: attention waits for them (Llama 3 accepts it, §3.3.2).
# - pipeline sends are asynchronous (Llama 3, §3.3.2): only those on the warm-up / cool-down
#   path (2 x (stages - 1) per step) are exposed.
# - FSDP gathers and reduce-scatters are prefetched layer by layer: they hide behind compute
#   and the pipeline bubble; only what exceeds that window is exposed.
TP_OVERLAP = 0.0
CP_OVERLAP = 0.0


class Traffic(NamedTuple):
  axis: str
  op: str              # all-gather | reduce-scatter | all-reduce | send
  payload: float       # bytes per device per step (see the module docstring)
  what: str


def link(layout: Layout, hw, axis: str) -> tuple[str, float]:
  """The link an axis's collectives cross: NVLink if the axis and every axis inside it fit in
  one node (mesh order: tensor innermost, then context, stage, fsdp, data)."""
  inner = 1
  for a in reversed(AXES):
    inner *= layout.size(a)
    if a == axis:
      break
  return ("nvlink", hw.nvlink) if inner <= hw.gpus_per_node else ("network", hw.network)


def wire_bytes(t: Traffic, n: int) -> float:
  if t.op == "send":
    return t.payload
  factor = (n - 1) / n
  return t.payload * factor * (2 if t.op == "all-reduce" else 1)


def collectives(model, layout: Layout) -> list[Traffic]:
  """Every collective of one step on the busiest device, by axis."""
  t, c, S = layout.size("tensor"), layout.size("context"), layout.size("stage")
  fsdp, data = layout.size("fsdp"), layout.size("data")
  a = _bytes(model.dtype)
  p = _bytes(model.param_dtype)
  g = _bytes(layout.gather_dtype or model.param_dtype)
  D, K, H = model.d_model, model.n_kv_heads, model.head_dim
  layers = max(stage_layers(model.n_layers, S))
  # Tokens each (tensor x stage) group sees per step, in its own sequence slice.
  tokens = layout.batch_tokens / (layout.replicas * c)
  recompute = layout.remat in ("save_names", "full") or (S > 1 and layout.schedule == "circular")
  passes = 3 if recompute else 2   # forward, backward (and forward again)
  out = []
  if t > 1:
    if layout.sequence_parallel:
      for op in ("all-gather", "reduce-scatter"):
        out.append(Traffic("tensor", op, 2 * passes * layers * tokens * D * a,
                           "residual stream around attention and MLP (sequence parallel)"))
    else:
      out.append(Traffic("tensor", "all-reduce", 2 * passes * layers * tokens * D * a,
                         "attention and MLP outputs (row-parallel matmuls)"))
    # Embedding lookup (vocab-parallel) and the head's input gradient, rows over stage too.
    out.append(Traffic("tensor", "all-reduce", 2 * tokens / S * D * a,
                       "vocab-parallel embedding and LM head"))
  if c > 1:
    kv = 2 * (K / t if K % t == 0 else K) * H * a * tokens * c   # gathered K/V per layer
    out.append(Traffic("context", "all-gather", (passes - 1) * layers * kv,
                       "K/V all-gathered before attention"))
    out.append(Traffic("context", "reduce-scatter", layers * kv, "dK/dV in backward"))
  if S > 1:
    per_send = tokens / layout.micro_batches * D * a / (t if layout.sequence_parallel else 1)
    if layout.schedule == "circular":
      sends = 2 * Schedule(S, layout.repeats, layout.micro_batches).iterations
    else:
      sends = 2 * layout.repeats * layout.micro_batches
    out.append(Traffic("stage", "send", sends * per_send, "activations between stages"))
  weights = layers * layer_params(model, t) + 2 * table_params(model, t)
  if fsdp > 1:
    if layout.fsdp_mode == "llama3":
      gathers, scatters = 1, 1
    else:   # per layer in forward and again in backward, every micro-batch pass
      passes_m = layout.micro_batches if S == 1 else 1
      gathers, scatters = 2 * passes_m, passes_m
    out.append(Traffic("fsdp", "all-gather", gathers * weights * g, "weights (FSDP)"))
    out.append(Traffic("fsdp", "reduce-scatter", scatters * weights * p,
                       f"gradients in {model.param_dtype} (FSDP)"))
  if data > 1:
    out.append(Traffic("data", "all-reduce", weights / fsdp * p, "gradients (data parallel)"))
  return out


def step_time(model, layout: Layout, hw) -> dict:
  """Seconds per step and where they go, TFLOP/s per GPU and MFU."""
  n = layout.n_gpus
  S = layout.size("stage")
  model_flops = flops_per_token(model, layout.seq_len) * layout.batch_tokens
  layers = stage_layers(model.n_layers, S)
  # The busiest stage sets the pace; recomputation adds a forward of every block; attention
  # runs slower than the matmuls.
  imbalance = max(layers) * S / model.n_layers
  per_token = flops_per_token(model, layout.seq_len)
  head = 6 * model.d_model * model.vocab_size
  attention = 6 * model.n_layers * layout.seq_len * model.n_heads * model.head_dim
  matmul = per_token - head - attention
  recompute = layout.remat in ("save_names", "full") or (S > 1 and layout.schedule == "circular")
  again = 4 / 3 if recompute else 1
  effective = (head + imbalance * again * (matmul + attention / ATTENTION_EFFICIENCY)) \
      * layout.batch_tokens / n
  compute = effective / (hw.peak_flops * COMPUTE_EFFICIENCY)
  bubble = 0.0
  if S > 1:
    bubble = compute * Schedule(S, layout.repeats, layout.micro_batches).bubble
  exposed, times = {}, {}
  for traffic in collectives(model, layout):
    kind, bandwidth = link(layout, hw, traffic.axis)
    seconds = wire_bytes(traffic, layout.size(traffic.axis)) / (bandwidth * LINK_EFFICIENCY)
    times[traffic.axis] = times.get(traffic.axis, 0.0) + seconds
  exposed["tensor"] = times.get("tensor", 0.0) * (1 - TP_OVERLAP)
  exposed["context"] = times.get("context", 0.0) * (1 - CP_OVERLAP)
  if "stage" in times:   # asynchronous sends: only the warm-up and cool-down path waits
    count = (2 * Schedule(S, layout.repeats, layout.micro_batches).iterations
             if layout.schedule == "circular" else 2 * layout.repeats * layout.micro_batches)
    exposed["stage"] = times["stage"] / count * 2 * (S - 1)
  dp = times.get("fsdp", 0.0) + times.get("data", 0.0)
  window = bubble + compute / (layout.repeats * layout.micro_batches)
  if layout.fsdp_mode == "zero3":
    window = compute + bubble
  exposed["fsdp+data"] = max(0.0, dp - window)
  total = compute + bubble + sum(exposed.values())
  tflops = model_flops / n / total / 1e12
  return {"step_s": total, "compute_s": compute, "bubble_s": bubble,
          "bubble": bubble / compute if compute else 0.0, "exposed_s": exposed,
          "comm_s": times, "links": {ax: link(layout, hw, ax)[0] for ax in times},
          "model_flops": model_flops, "tflops_per_gpu": tflops,
          "mfu": tflops * 1e12 / hw.peak_flops}
