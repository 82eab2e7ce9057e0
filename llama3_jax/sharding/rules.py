"""Logical axis rules: which mesh axes each logical parameter and activation name lands on.

Model code names logical axes only; these tables are the one place mesh axes appear. Parameter
and activation names are separate (levanter's lesson), so FSDP on `embed` and batch sharding on
`act_batch` never compete for one mesh axis.

One table covers every strategy, because an axis of size 1 shards nothing:

    mesh                        what the tables give
    data=8                      data parallel: parameters replicated, batch split
    fsdp=8                      FSDP (ZeRO-3): parameters, gradients, optimizer state split
    data=2, fsdp=4              FSDP inside groups of 4, replicated across the 2 groups
    fsdp=2, tensor=4            + Megatron tensor parallelism of heads, FFN and vocabulary
    ... sequence_parallel=True  + norm/residual activations split over `tensor` along the
                                  sequence (reduce-scatter / all-gather instead of all-reduce)
    fsdp=2, context=4           + context parallelism: each sequence split over `context`
                                  (act_seq); attention runs under shard_map in
                                  llama3_jax/parallel/context.py (Llama 3's all-gathered K/V)
"""

import dataclasses
import warnings

import jax
from flax import linen
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Parameters (names carried by every nnx.Param, see llama3_jax/model).
PARAM_RULES: Rules = (
    ("layers", "stage"),     # stacked layers: split into pipeline stages
    ("embed", "fsdp"),       # FSDP shards every weight along d_model
    ("vocab", "tensor"),     # vocab-parallel embedding and LM head
    ("heads", "tensor"),     # column-parallel q, row-parallel o (Megatron)
    ("kv_heads", "tensor"),  # replicated instead when tensor > KV heads (see `make_rules`)
    ("mlp", "tensor"),       # column-parallel gate/up, row-parallel down
    ("head_dim", None),
)

# Activations (names passed to `constrain` in the model).
ACTIVATION_RULES: Rules = (
    # Rows: over stage too, so that the embedding, head and loss outside the pipelined blocks
    # are split over every device (llama3_jax/parallel/pipeline.py drops it inside).
    ("act_batch", ("data", "fsdp", "stage")),
    ("act_seq", "context"),
    ("act_res_seq", "context"),   # the residual stream; ("context", "tensor") with SP
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """How parameters move during a step (the mesh sizes say how far they are split).

  fsdp_mode:
    "zero3"  - weights are all-gathered layer by layer in forward and again in backward; only
               a layer's gathered weights are alive at a time.
    "llama3" - Llama 3's mode (report §3.3.2): gradients and optimizer state stay sharded, but
               weights gathered in forward are kept for backward (no second all-gather), at the
               cost of holding the gathered weights on every device.
  sequence_parallel: split the residual stream over `tensor` along the sequence.
  context_schedule: how attention sees the keys of other `context` ranks (llama3_jax/parallel/
    context.py): "all_gather" (Llama 3's: K/V all-gathered) or "ring" (K/V blocks passed round
    a ring; O(local) memory when the gathered K/V do not fit). Both give the same result.
  pipeline_repeats: with a `stage` axis, the layer chunks each pipeline stage holds (V): 1 is
    GPipe, more is the interleaved schedule, bubble (stages - 1) / (V x micro-batches).
  vocab_over_fsdp: split the embedding table and the LM head by vocabulary over `fsdp` too
    (Megatron's vocab-parallel layers, on tensor x fsdp) instead of by d_model. Their weights
    then stay in place; the lookup's partial rows are reduce-scattered and the head all-gathers
    the fsdp group's activations, computing logits for its vocabulary slice. That moves
    tokens-per-fsdp-group x d_model activations instead of vocab x d_model weights (twice, and
    an all-reduce of their gradient): the better trade while the group holds fewer tokens than
    the vocabulary has entries (small models, short batches), the worse one at scale. "auto"
    (the default) picks by that comparison: `resolve` turns it into True or False for a run's
    largest batch (the launchers do, in `make_plan`); `make_rules` resolves it for the batch
    it is given, and without one keeps the tables whole over fsdp (False).
  gather_dtype: the dtype Llama 3's FSDP mode gathers the weights in (the report's: the compute
    dtype, "bfloat16": half the bytes gathered and held) while the fp32 masters stay sharded
    and the gradients are accumulated and reduced in fp32; None gathers them as stored. With
    the compute dtype the numbers are the same (the model casts every weight to it anyway).
  rows_over_stage: with a `stage` axis, split the rows over it too outside the pipelined blocks
    (embedding, head, loss: every device works on its own rows). It needs every batch's rows
    to divide data x fsdp x stage; `make_plan` turns it off for a run where one does not (the
    405B ramp's first 1,024 rows on 2,048 data x fsdp x stage groups): those parts are then
    replicated over `stage`, each stage computing them for its data x fsdp rows.
  """
  fsdp_mode: str = "zero3"
  sequence_parallel: bool = False
  context_schedule: str = "all_gather"
  pipeline_repeats: int = 1
  vocab_over_fsdp: bool | str = "auto"   # True, False or "auto" (see `resolve`)
  rows_over_stage: bool = True
  gather_dtype: str | None = None

  def __post_init__(self):
    if self.fsdp_mode not in ("zero3", "llama3"):
      raise ValueError(f"fsdp_mode={self.fsdp_mode!r}; use 'zero3' or 'llama3'")
    if self.pipeline_repeats < 1:
      raise ValueError(f"pipeline_repeats={self.pipeline_repeats}; use 1 (GPipe) or more "
                       "(interleaved: layer chunks per pipeline stage)")
    if not isinstance(self.vocab_over_fsdp, bool) and self.vocab_over_fsdp != "auto":
      raise ValueError(f"vocab_over_fsdp={self.vocab_over_fsdp!r}; use True, False or 'auto'")
    if self.gather_dtype not in (None, "float32", "bfloat16", "float16"):
      raise ValueError(f"gather_dtype={self.gather_dtype!r}; use None (as stored), 'bfloat16', "
                       "'float16' or 'float32'")
    if self.context_schedule not in ("all_gather", "ring"):
      raise ValueError(f"context_schedule={self.context_schedule!r}; use 'all_gather' or 'ring'")

  def resolve(self, vocab_size: int, batch_tokens: int, sizes: dict[str, int]) -> "ShardingConfig":
    """This config with vocab_over_fsdp="auto" decided for `batch_tokens` on a mesh of `sizes`."""
    if self.vocab_over_fsdp != "auto":
      return self
    return dataclasses.replace(
        self, vocab_over_fsdp=vocab_over_fsdp_pays(vocab_size, batch_tokens, sizes))


def vocab_over_fsdp_pays(vocab_size: int, batch_tokens: int, sizes: dict[str, int]) -> bool:
  """Whether splitting the vocabulary tables over fsdp moves fewer bytes than gathering them.

  Per device, the vocab-parallel head gathers the activations of its fsdp group (tokens /
  (data x stage x context) rows of d_model); the default layout gathers the tables
  (vocab / tensor rows of d_model). Both scale with d_model, so rows are compared.
  """
  if sizes.get("fsdp", 1) == 1:
    return False
  gathered_tokens = batch_tokens // (sizes.get("data", 1) * sizes.get("stage", 1)
                                     * sizes.get("context", 1))
  return gathered_tokens < vocab_size // sizes.get("tensor", 1)


def make_rules(model, sizes: dict[str, int], config: ShardingConfig = ShardingConfig(),
               batch_tokens: int | None = None) -> Rules:
  """The rule table for one model (ModelConfig) on one mesh (axis sizes).

  `batch_tokens` decides vocab_over_fsdp="auto"; with no batch known "auto" is False.
  """
  if config.vocab_over_fsdp == "auto":
    config = (config.resolve(model.vocab_size, batch_tokens, sizes) if batch_tokens
              else dataclasses.replace(config, vocab_over_fsdp=False))
  replicate_kv = model.n_kv_heads % sizes.get("tensor", 1) != 0
  overrides = {}
  if replicate_kv:   # e.g. 8 KV heads on tensor=16: every tensor rank keeps whole KV heads
    overrides.update(kv_heads=None, act_kv_heads=None)
  if not config.rows_over_stage:
    overrides["act_batch"] = ("data", "fsdp")
  if config.sequence_parallel:
    overrides["act_res_seq"] = ("context", "tensor")
    if replicate_kv:
      warnings.warn("sequence_parallel with tensor > n_kv_heads: XLA's partitioner falls back to "
                    "replicating attention tensors in backward (correct, but slower); prefer "
                    "tensor <= n_kv_heads with sequence parallelism", stacklevel=2)
  stage, fsdp, context = sizes.get("stage", 1), sizes.get("fsdp", 1), sizes.get("context", 1)
  # Context parallelism's ranks hold the same weights: shard them over `context` too, as FSDP
  # does (Megatron's distributed optimizer over data x context), where d_model divides.
  embed = ("fsdp", "context") if context > 1 and model.d_model % (fsdp * context) == 0 \
      else ("fsdp",)
  if model.n_layers % stage:
    # An uneven pipeline (llama3_jax/parallel/pipeline.py): the [L, ...] stack cannot split by
    # layer over `stage`, so every weight splits over it along d_model instead (the same bytes
    # per device; the step gathers each stage's layers), or, where d_model does not divide,
    # the stack is replicated over `stage`.
    overrides["layers"] = None
    if model.d_model % (fsdp * stage * (context if len(embed) > 1 else 1)) == 0:
      embed = ("fsdp", "stage") + embed[1:]
  if len(embed) > 1:
    overrides["embed"] = embed
  rules = tuple((name, overrides.get(name, axes)) for name, axes in
                PARAM_RULES + ACTIVATION_RULES)
  if config.vocab_over_fsdp:
    # The first rule whose mesh axes are still free wins (flax's logical_to_mesh_axes): these
    # come first, so `embed` of the vocabulary tables and `act_batch` of the logits find fsdp
    # taken and fall through to the next rule (replicated, and data x stage).
    rules = (("vocab", ("tensor", "fsdp")), ("act_vocab", ("tensor", "fsdp"))) + rules + (
        ("act_batch", ("data", "stage") if config.rows_over_stage else "data"),)
  return rules


def logical_to_spec(names, rules: Rules) -> PartitionSpec:
  """PartitionSpec of mesh axes for a tuple of logical names (unknown names: replicated)."""
  return linen.logical_to_mesh_axes(tuple(names), rules)


def state_specs(state, rules: Rules):
  """Mesh PartitionSpecs for an nnx State (real or abstract), from its logical metadata."""
  return jax.tree.map(lambda p: logical_to_spec(tuple(p), rules), nnx.get_partition_spec(state),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def state_shardings(state, mesh, rules: Rules):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), state_specs(state, rules),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def without_axis(spec: PartitionSpec, axis: str) -> PartitionSpec:
  """`spec` with mesh `axis` removed: the layout after all-gathering over that axis."""
  def drop(entry):
    if isinstance(entry, tuple):
      kept = tuple(a for a in entry if a != axis)
      return kept if len(kept) > 1 else (kept[0] if kept else None)
    return None if entry == axis else entry
  return PartitionSpec(*(drop(e) for e in spec))


def gathered_over_fsdp(shardings):
  """The NamedShardings after all-gathering over `fsdp` (and `context`, which shards weights
  as fsdp does): weights as Llama 3's mode uses them."""
  gathered = lambda s: NamedSharding(s.mesh, without_axis(without_axis(s.spec, "fsdp"),
                                                           "context"))
  return jax.tree.map(gathered, shardings, is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_spec(rules: Rules) -> PartitionSpec:
  """PartitionSpec of a [B, T] input array."""
  return logical_to_spec(("act_batch", "act_seq"), rules)
