"""Step time of a training layout: compute at a stated efficiency, every collective over the
link it crosses, what overlaps, and the pipeline bubble; out come TFLOP/s per GPU and MFU.

    t = step_time(model, layout, get_hardware("h100"))
    t["mfu"], t["tflops_per_gpu"], t["exposed_s"]          # seconds exposed, by axis
    collectives(model, layout)                             # [Traffic(axis, op, payload, what)]

Model FLOPs are `llama3_jax.model.flops.flops_per_token` (6N + causal attention), the count
the launcher's MFU uses, so predicted and measured MFU mean the same thing. Collective volumes
are payloads: the bytes of the whole tensor a collective gathers or reduces over its group
(what llama3_jax/planner/measure.py reads from compiled HLO); the time on the wire is payload x
(n - 1) / n for all-gather and reduce-scatter, twice that for all-reduce, payload for a
point-to-point send, over NVLink when the axis fits inside a node and the network otherwise.
`layout.step` says whose step is priced: Megatron-LM's / Llama 3's ("megatron") or this
project's as XLA compiles it ("xla": its extra tensor-parallel reductions and its circular
pipeline's traffic, checked against HLO in tests/planner/test_calibration.py).
"""

from typing import NamedTuple

from llama3_jax.parallel.pipeline import Schedule
from llama3_jax.planner.layout import Layout, pipeline_replicas, stage_slots, weight_shards
from llama3_jax.planner.memory import _bytes, layer_params, table_params
from llama3_jax.sharding.mesh import AXES
from llama3_jax.model.flops import (attention_flops_per_token, flops_per_token,
                                     head_params)

# The main free constant: the fraction of the dense bf16 peak that a transformer step's
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
  one node (mesh order: tensor innermost, then context, stage, fsdp, data), or, with the
  layout's multi-node split, if the axis spans a single node."""
  if layout.dcn is not None:
    crosses = layout.dcn.get(axis, 1) > 1
    return ("network", hw.network) if crosses else ("nvlink", hw.nvlink)
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
  D, K, H = model.d_model, model.n_kv_heads, model.head_dim
  layers = stage_slots(model, layout)
  # Tokens each (tensor x stage) group sees per step, in its own sequence slice.
  tokens = layout.batch_tokens / (layout.replicas * c)
  recompute = layout.remat in ("save_names", "full")
  passes = 3 if recompute else 2   # forward, backward (and forward again)
  out = []
  if t > 1:
    out += _tensor(model, layout, layers, tokens, passes - 1)
    # Embedding lookup (vocab-parallel) and the head's input gradient, rows over stage too.
    out.append(Traffic("tensor", "all-reduce", 2 * tokens / S * D * a,
                       "vocab-parallel embedding and LM head"))
  if c > 1:
    kv = 2 * (K / t if K % t == 0 else K) * H * a * tokens * c   # gathered K/V per layer
    # Under remat "minimal" this step gathers them again in backward (only the local K/V kept).
    again = 1 if layout.step == "xla" and layout.remat == "minimal" else 0
    out.append(Traffic("context", "all-gather", (passes - 1 + again) * layers * kv,
                       "K/V all-gathered before attention"))
    out.append(Traffic("context", "reduce-scatter", layers * kv, "dK/dV in backward"))
  if S > 1:
    per_send = tokens / layout.micro_batches * D * a / (t if layout.sequence_parallel else 1)
    if layout.schedule == "circular":
      out += _circular_pipeline(model, layout, tokens, per_send)
    else:
      out.append(Traffic("stage", "send", 2 * layout.repeats * layout.micro_batches * per_send,
                         "activations between stages"))
  weights = layers * layer_params(model, t) + 2 * table_params(model, t)
  shards = weight_shards(model, layout)
  if shards > 1:   # over fsdp (and context where it shards the weights too)
    out += _fsdp(model, layout, layers, weights)
  if data > 1:
    out.append(Traffic("data", "all-reduce", weights / shards * p, "gradients (data parallel)"))
  if c > 1 and shards == fsdp:   # weights replicated over context: so are their gradients
    out.append(Traffic("context", "all-reduce", weights / fsdp * p,
                       "gradients (weights replicated over context)"))
  return out


def _tensor(model, layout: Layout, layers: int, tokens: float, forwards: int) -> list[Traffic]:
  """Tensor parallelism's traffic, per layer and forward pass: with sequence parallelism the
  residual stream is gathered before attention and before the MLP and their outputs reduced
  (reduce-scattered; XLA:CPU all-reduces them); backward gathers the outputs' gradients and
  reduces the input gradients of the column-parallel matmuls: two in Megatron's step (q/k/v
  and gate/up fused) and in this step with `fused_matmuls`, five otherwise (q, k, v, gate,
  up). Without sequence parallelism
  only the reductions remain, as all-reduces."""
  a, D = _bytes(model.dtype), model.d_model
  xla = layout.step == "xla"
  gathers = 2 * forwards + 2
  if xla and layout.remat == "minimal":
    gathers += 2   # the normed inputs, gathered again for the weight gradients (not kept)
  reductions = 2 * forwards + (5 if xla and not layout.fused_matmuls else 2)
  unit = layers * tokens * D * a
  per_iteration = {}
  if xla and layout.size("stage") > 1 and layout.schedule == "circular":
    # This project's pipeline: every iteration runs (idle ones too), and the stage output it
    # hands to the buffer of micro-batches is reduced once more (HLO: with sequence
    # parallelism one reduction per iteration, without it two).
    schedule = Schedule(layout.size("stage"), layout.repeats, layout.micro_batches)
    micro = tokens / layout.micro_batches * D * a
    unit = schedule.iterations * layers / layout.repeats * micro
    per_iteration = {"all-reduce": 1 if layout.sequence_parallel else 2}
    per_iteration = {op: n * schedule.iterations * micro for op, n in per_iteration.items()}
  if not layout.sequence_parallel:
    return [Traffic("tensor", "all-reduce",
                    reductions * unit + per_iteration.get("all-reduce", 0),
                    "attention / MLP outputs and input gradients (row / column parallel)")]
  out = [Traffic("tensor", "all-gather", gathers * unit + per_iteration.get("all-gather", 0),
                 "residual stream before attention and MLP, their outputs' gradients "
                 "(sequence parallel)"),
         Traffic("tensor", "reduce-scatter", reductions * unit,
                 "attention / MLP outputs and input gradients (sequence parallel)")]
  if per_iteration:
    out.append(Traffic("tensor", "all-reduce", per_iteration["all-reduce"],
                       "the pipeline's stage outputs (sequence parallel)"))
  return out


def _fsdp(model, layout: Layout, layers: int, weights: float) -> list[Traffic]:
  t, S = layout.size("tensor"), layout.size("stage")
  p, g = _bytes(model.param_dtype), _bytes(layout.gather_dtype or model.param_dtype)
  if S > 1 and layout.schedule == "circular" and layout.fsdp_mode == "llama3":
    # Gathered once before the loop; every device's gradient of its own rows accumulates
    # through the loop, summed over the replicas once after it (an all-reduce in XLA's HLO).
    return [Traffic("fsdp", "all-gather", weights * g, "weights (FSDP)"),
            Traffic("fsdp", "all-reduce", weights * p,
                    f"gradients in {model.param_dtype}, summed once per step (FSDP)")]
  if S > 1 and layout.schedule == "circular":
    # This project's pipeline, as compiled: each iteration's chunk gradient is reduced over
    # fsdp inside the schedule's loop (in both modes); ZeRO-3 also gathers the chunk's
    # weights every iteration, in forward and again in the backward recomputation.
    iterations = Schedule(S, layout.repeats, layout.micro_batches).iterations
    chunk = layers / layout.repeats * layer_params(model, t)
    tables = 2 * table_params(model, t)
    # Forward: with one chunk per stage its gather is loop-invariant and XLA hoists it out
    # of the loop; backward gathers the chunk again every iteration.
    forward = 1 if layout.repeats == 1 else iterations
    gathers = weights * g if layout.fsdp_mode == "llama3" else \
        (forward + iterations) * chunk * g + tables * g
    return [Traffic("fsdp", "all-gather", gathers, "weights (FSDP)"),
            Traffic("fsdp", "all-reduce", iterations * chunk * p + tables * p,
                    "each iteration's chunk gradient (FSDP, inside the pipeline loop)")]
  if layout.fsdp_mode == "llama3":
    gathers, scatters = 1, 1
  else:   # per layer in forward and again in backward, every micro-batch pass
    passes = layout.micro_batches if S == 1 else 1
    gathers, scatters = 2 * passes, passes
  return [Traffic("fsdp", "all-gather", gathers * weights * g, "weights (FSDP)"),
          Traffic("fsdp", "reduce-scatter", scatters * weights * p,
                  f"gradients in {model.param_dtype} (FSDP)")]


def _circular_pipeline(model, layout: Layout, tokens: float, per_send: float) -> list[Traffic]:
  """This project's SPMD pipeline as XLA compiles it (llama3_jax/parallel/pipeline.py)."""
  iterations = Schedule(layout.size("stage"), layout.repeats, layout.micro_batches).iterations
  a = _bytes(model.dtype)
  # The carry's roll over the sharded stage axis is two collective-permutes of the whole
  # slice, in forward and in backward; stage 0's next input is read from the buffer of
  # micro-batches (an all-to-all each way and an all-gather); the blocks' input, output and
  # their gradients cross between rows-over-stage and stages-hold-items layouts once.
  boundary = 3 * tokens * model.d_model * a + tokens * (model.head_dim + 2) * 4
  if pipeline_replicas(layout):
    # The buffer of micro-batches lies on every stage, split over the replicas: the last
    # stage's output reaches it by an all-reduce over `stage` (its gradient likewise), and
    # stage 0 reads its next input locally; the carry's roll is five permutes in all.
    return [Traffic("stage", "send", 5 * iterations * per_send, "the pipeline carry, rolled"),
            Traffic("stage", "all-reduce", 2 * iterations * per_send,
                    "the last stage's output into the micro-batch buffer"),
            Traffic("stage", "all-gather", boundary,
                    "blocks' input, output and side inputs")]
  return [Traffic("stage", "send", 4 * iterations * per_send, "the pipeline carry, rolled"),
          Traffic("stage", "all-to-all", 2 * iterations * per_send, "stage 0's next input"),
          Traffic("stage", "all-gather", iterations * per_send + boundary,
                  "micro-batch buffer; blocks' input, output and side inputs")]


def step_time(model, layout: Layout, hw) -> dict:
  """Seconds per step and where they go, TFLOP/s per GPU and MFU."""
  n = layout.n_gpus
  S = layout.size("stage")
  model_flops = flops_per_token(model, layout.seq_len) * layout.batch_tokens
  # The busiest stage sets the pace (padded slots of the circular pipeline included);
  # recomputation adds a forward of every block; attention runs slower than the matmuls.
  imbalance = stage_slots(model, layout) * S / model.n_layers
  per_token = flops_per_token(model, layout.seq_len)
  head = 6 * head_params(model)
  attention = attention_flops_per_token(model, layout.seq_len)
  matmul = per_token - head - attention
  recompute = layout.remat in ("save_names", "full")
  again = 4 / 3 if recompute else 1
  effective = (head + imbalance * again * (matmul + attention / ATTENTION_EFFICIENCY)) \
      * layout.batch_tokens / n
  compute = effective / (hw.peak_flops * COMPUTE_EFFICIENCY)
  bubble = 0.0
  if S > 1:
    bubble = compute * Schedule(S, layout.repeats, layout.micro_batches).bubble
  exposed, times, grads = {}, {}, 0.0
  for traffic in collectives(model, layout):
    kind, bandwidth = link(layout, hw, traffic.axis)
    seconds = wire_bytes(traffic, layout.size(traffic.axis)) / (bandwidth * LINK_EFFICIENCY)
    times[traffic.axis] = times.get(traffic.axis, 0.0) + seconds
    if traffic.axis in ("fsdp", "data") or traffic.what.startswith("gradients"):
      grads += seconds   # prefetched / bucketed: overlaps compute (below)
    else:
      exposed[traffic.axis] = exposed.get(traffic.axis, 0.0) + seconds
  exposed["tensor"] = exposed.get("tensor", 0.0) * (1 - TP_OVERLAP)
  exposed["context"] = exposed.get("context", 0.0) * (1 - CP_OVERLAP)
  if "stage" in exposed:   # asynchronous sends: only the warm-up and cool-down path waits
    steps = Schedule(S, layout.repeats, layout.micro_batches).iterations \
        if layout.schedule == "circular" else layout.repeats * layout.micro_batches
    exposed["stage"] = exposed["stage"] / steps * (S - 1)
  window = bubble + compute / (layout.repeats * layout.micro_batches)
  if layout.fsdp_mode == "zero3":
    window = compute + bubble
  exposed["fsdp+data"] = max(0.0, grads - window)
  total = compute + bubble + sum(exposed.values())
  tflops = model_flops / n / total / 1e12
  return {"step_s": total, "compute_s": compute, "bubble_s": bubble,
          "bubble": bubble / compute if compute else 0.0, "exposed_s": exposed,
          "comm_s": times, "links": {ax: link(layout, hw, ax)[0] for ax in times},
          "model_flops": model_flops, "tflops_per_gpu": tflops,
          "mfu": tflops * 1e12 / hw.peak_flops}
