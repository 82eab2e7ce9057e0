"""A training layout the planner prices: mesh axis sizes, batch, schedule, FSDP mode, remat.

    layout = Layout({"tensor": 8, "stage": 16, "fsdp": 128}, seq_len=8192,
                    batch_tokens=16 * 2**20, micro_batches=16, repeats=8)
    reason = why_not(model, layout, n_gpus=16384)     # None, or a named Reason

Axis names are the mesh's (llama3_jax/sharding/mesh.py), innermost (fastest links) last:
data, fsdp, stage, context, tensor. Llama 3's "DP" is `fsdp` here (it shards optimizer state
and gradients over the data-parallel ranks). `schedule` says how the pipeline keeps
micro-batches: "1f1b" is Megatron's / Llama 3's interleaved one-forward-one-backward (at most
`stages` micro-batches in flight, full activations kept); "circular" is this project's SPMD
pipeline (llama3_jax/parallel/pipeline.py: every iteration's stage input kept, and what the
remat policy keeps of its layers, for all micro-batches at once).
"""

import dataclasses
import math
from typing import NamedTuple

from llama3_jax.sharding.mesh import AXES, context_chunk_problem

SCHEDULES = ("1f1b", "circular")
# "minimal": no matmul recomputed, but the norms' outputs and SwiGLU's product are rebuilt in
# backward from what is kept, and the residual stream stays split over tensor (sequence
# parallelism gathers the normed inputs again in backward). The reading this planner takes of
# Llama 3's "no activation checkpointing" at 8K (§3.3.2), and ModelConfig.remat="minimal" in
# this project's step (llama3_jax/model/transformer.py names what it keeps).
REMATS = ("none", "minimal", "save_names", "full")


@dataclasses.dataclass(frozen=True)
class Layout:
  sizes: dict                       # axis -> size (axes not named: 1)
  seq_len: int
  batch_tokens: int                 # global tokens per step
  micro_batches: int = 1            # M: pipeline micro-batches (or gradient accumulation)
  repeats: int = 1                  # V: layer chunks per pipeline stage (interleaving)
  schedule: str = "1f1b"
  fsdp_mode: str = "llama3"         # "llama3" (gathered once per step) or "zero3"
  remat: str = "none"
  sequence_parallel: bool = True    # residual stream split over `tensor` (when tensor > 1)
  gather_dtype: str | None = None   # weights as gathered by FSDP; None: the parameter dtype
  # Whose step: "megatron" (Megatron-LM / Llama 3: q/k/v and gate/up fused into one matmul
  # each, so backward reduces two input gradients per layer over `tensor`; activations as
  # Korthikanti et al. 2022 count them) or "xla" (this project's model as XLA compiles it: five
  # input-gradient reductions, q, k, v, gate and up, and the residuals XLA keeps, measured in
  # llama3_jax/planner/memory.py).
  step: str = "megatron"
  # This step with ModelConfig.fused_matmuls (q/k/v and gate/up as one matmul each): two
  # input-gradient reductions per layer, as Megatron's.
  fused_matmuls: bool = False
  # The multi-node split (MeshConfig's dcn_* sizes): nodes each axis spans. None: placed by the
  # mesh order, tensor innermost, filling nodes of the hardware's GPUs per node.
  dcn: dict | None = None

  def size(self, axis: str) -> int:
    return self.sizes.get(axis, 1)

  @property
  def n_gpus(self) -> int:
    return math.prod(self.size(a) for a in AXES)

  @property
  def rows(self) -> int:
    return self.batch_tokens // self.seq_len

  @property
  def replicas(self) -> int:
    """Data-parallel replicas (Table 4's DP): rows are split over data x fsdp."""
    return self.size("data") * self.size("fsdp")

  def describe(self) -> str:
    axes = ",".join(f"{a}={self.size(a)}" for a in reversed(AXES) if self.size(a) > 1)
    extra = [f"M={self.micro_batches}"]
    if self.size("stage") > 1:
      extra += [f"V={self.repeats}", self.schedule]
    extra += [f"fsdp={self.fsdp_mode}", f"remat={self.remat}"]
    if self.sequence_parallel and self.size("tensor") > 1:
      extra.append("SP")
    if self.step == "xla":   # what this project's step runs (the dry run's plan)
      extra += ["fused"] * self.fused_matmuls + [f"gather={self.gather_dtype}"] * bool(
          self.gather_dtype)
    return f"{axes or 'one device'} ({' '.join(extra)})"


class Reason(NamedTuple):
  """Why a layout cannot run: a short name (for tables and tests) and the sentence."""
  name: str
  message: str

  def __str__(self):
    return f"{self.name}: {self.message}"


def stage_layers(n_layers: int, stages: int) -> list[int]:
  """Layers per pipeline stage. Llama 3 (report §3.3.2) gives the first and the last stage one
  layer fewer when that makes the rest even (126 = 7 + 14 x 8 + 7); otherwise the extra
  layers go to the middle stages."""
  if stages == 1:
    return [n_layers]
  if (n_layers + 2) % stages == 0 and stages > 2:
    k = (n_layers + 2) // stages
    return [k - 1] + [k] * (stages - 2) + [k - 1]
  base, extra = divmod(n_layers, stages)
  layers = [base] * stages
  for s in (list(range(1, stages - 1)) + [0, stages - 1])[:extra]:   # middle stages first
    layers[s] += 1
  return layers


def weight_shards(model, layout: Layout) -> int:
  """Devices each weight is split over besides tensor and stage: fsdp, and in this project's
  step context too where d_model divides (llama3_jax/sharding/rules.py: context ranks hold the
  same weights)."""
  f, c = layout.size("fsdp"), layout.size("context")
  if layout.step == "xla" and c > 1 and model.d_model % (f * c) == 0:
    return f * c
  return f


def stage_slots(model, layout: Layout) -> int:
  """Layer slots the busiest pipeline stage runs per micro-batch: its layers under 1F1B; under
  the circular schedule V chunks of ceil(L / (V S)) slots, padded ones included
  (llama3_jax/parallel/pipeline.py's `layout`)."""
  S = layout.size("stage")
  if S > 1 and layout.schedule == "circular":
    return layout.repeats * -(-model.n_layers // (S * layout.repeats))
  return max(stage_layers(model.n_layers, S))


def pipeline_replicas(layout: Layout) -> bool:
  """Whether this project's pipeline runs its rows' axes as replicas (llama3_jax/parallel/
  pipeline.py): each device accumulates its own rows' weight gradient through the schedule's
  loop and the replicas' gradients are summed once per step. It does where the weights arrive
  gathered over those axes: Llama 3's FSDP mode, or `data` (replicated weights)."""
  return (layout.size("stage") > 1 and layout.schedule == "circular"
          and (layout.size("data") > 1
               or (layout.size("fsdp") > 1 and layout.fsdp_mode == "llama3")))


def why_not(model, layout: Layout, n_gpus: int | None = None) -> Reason | None:
  """The first reason `layout` cannot run `model` (memory is checked by the planner)."""
  t, c, s = layout.size("tensor"), layout.size("context"), layout.size("stage")
  bad = [f"{a}={n}" for a, n in layout.sizes.items() if a not in AXES or n < 1]
  if bad:
    return Reason("bad_axis", f"{', '.join(bad)}: axes are {', '.join(AXES)}, sizes >= 1")
  if n_gpus is not None and layout.n_gpus != n_gpus:
    return Reason("gpus_not_product", f"the axes multiply to {layout.n_gpus}, not {n_gpus} "
                  "GPUs; make their product the GPU count")
  for name, value in (("n_heads", model.n_heads), ("ffn_dim", model.ffn_dim),
                      ("vocab_size", model.vocab_size)):
    if value % t:
      return Reason("tensor_split", f"{name}={value} does not split over tensor={t}")
  k = model.n_kv_heads
  if (t <= k and k % t) or (t > k and t % k):
    return Reason("tensor_over_kv_heads", f"tensor={t} with n_kv_heads={k}: KV heads neither "
                  "split evenly nor replicate in whole copies; choose a divisor or a multiple "
                  f"of {k}")
  if model.d_model % layout.size("fsdp"):
    return Reason("fsdp_split", f"d_model={model.d_model} does not split over "
                  f"fsdp={layout.size('fsdp')}")
  problem = context_chunk_problem(layout.seq_len, c)
  if problem:
    return Reason("seq_over_context", problem)
  if layout.batch_tokens % layout.seq_len:
    return Reason("batch_tokens", f"batch of {layout.batch_tokens} tokens is not a whole "
                  f"number of {layout.seq_len}-token sequences")
  if layout.rows % (layout.replicas * layout.micro_batches):
    return Reason("batch_split", f"{layout.rows} sequences do not split into "
                  f"{layout.replicas} replicas x {layout.micro_batches} micro-batches")
  if s > 1 and layout.schedule == "circular" and s * layout.repeats - model.n_layers >= s:
    return Reason("layers_over_stages", f"{model.n_layers} layers over stage={s} x "
                  f"repeats={layout.repeats} leaves {s} or more chunks without layers")
  if s > 1 and layout.schedule != "circular" and \
      min(stage_layers(model.n_layers, s)) < layout.repeats:
    return Reason("layers_over_stages", f"{model.n_layers} layers over stage={s} x "
                  f"repeats={layout.repeats} leaves a chunk without layers")
  for field, allowed in (("schedule", SCHEDULES), ("remat", REMATS),
                         ("step", ("megatron", "xla")),
                         ("fsdp_mode", ("llama3", "zero3"))):
    if getattr(layout, field) not in allowed:
      return Reason("bad_option", f"{field}={getattr(layout, field)!r}; use one of {allowed}")
  return None
