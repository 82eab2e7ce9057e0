"""Pipeline parallelism over the mesh's `stage` axis: GPipe and the interleaved (circular) schedule.

    out_mbtd = pipeline(layer_fn, weights, x_mbtd, aux, stages=4, repeats=2)

`weights` are stacked layer parameters ([L, ...] in natural layer order). They are laid out as
[repeats V, stages S, slots per chunk Lmax, ...]: V S layer chunks, chunk c = r S + s on stage s
(stage s holds chunks s, S + s, 2S + s, ...: round-robin, Megatron's interleaved assignment;
V = 1 is GPipe). `x_mbtd` holds M micro-batches of activations; `aux` per-micro-batch side
inputs ([M, ...] leaves: RoPE angles, segment ids...).

Any L > (V - 1) S works (`layout`): every chunk holds Lmax = ceil(L / (V S)) or Lmax - 1 layers,
in natural order chunk after chunk (so fewer than S chunks may be empty: 126 layers in 8 chunks
on each of 16 stages leave the first and the last stage one empty chunk each). The V S Lmax - L
chunks one layer short go to the stages from both ends in turn (first, last, second, second to
last, ..., round after round), on the first half of that order a stage's earliest chunk, on the
second its latest. So the first and the last
stage, which carry the embedding and the head in Llama 3, are the first to hold a layer fewer
(126 layers on 16 stages: 7 + 14 x 8 + 7, report §3.3.2), and per-stage totals differ by at most
one whatever L. A short chunk's last slot is padded: zero weights gathered inside the step (the
[L, ...] stack, its gradients and checkpoints never see the padding; an even layout is a plain
reshape) and a mask that passes x through unchanged. A padded slot costs one layer's time on its
stage (the stages run in lockstep, so the stage would only wait; under the vmap over stages a
`lax.cond` on it would become a select running both branches anyway) and one layer of zero
weights; its weight gradient is exactly zero and is dropped. `Schedule.waste` is the padded
share of the slots.

The schedule runs in SPMD: every iteration each stage applies its current layer chunk to the
micro-batch it holds (a `vmap` over stages with `spmd_axis_name`, so XLA gives each stage's
work to its own devices), then the stage outputs shift by one stage (`jnp.roll` on the sharded
axis: a collective permute) and stage 0 takes the next work item. Work item w = r * M + m is
micro-batch m on its r-th trip through the stages; stage s does item t - s at iteration t. The
last stage's output of item w is stage 0's input of item w + M, which it needs M - S + 1
iterations later, so it waits in a buffer of micro-batches; fewer than S micro-batches are padded
to S (idle work, counted as bubble). Iterations: V * max(M, S) + S - 1, of which each stage is
busy V * M: the bubble, idle / busy, is (S - 1) / (V * M) for M >= S, Llama 3's formula.

Gradients flow back through the same schedule by autodiff: backward keeps every iteration's
stage input and what `layer_fn` keeps of each of its layers (`pipelined_blocks` rematerialises
each layer as the model's `remat` says: "minimal" recomputes no matmul, "full" keeps only each
layer's input, "none" keeps everything).

Gradients are summed over the rows' axes once per step, not per iteration: the rows of every
micro-batch split over `replicas` (data x fsdp devices) and each replica's work is a `vmap` over
a copy of the stage's weights (`spmd_axis_name`, as for the stages), so autodiff accumulates each
device's own weight gradient through the loop and sums the replicas' after it. That needs the
weights gathered over those axes before the loop (Llama 3's FSDP mode; `data` replicates them
anyway); under ZeRO-3 each iteration's chunk gradient is reduced inside the loop. The buffer of
micro-batches then lies on every stage, split over the replicas only.
"""

import dataclasses
import functools
import logging

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from llama3_jax.errors import UserError
from llama3_jax.runtime.hooks import Hook

log = logging.getLogger(__name__)


def _on_stages(x, stage_axis, replica_axes=()):
  """Leading axis over the stage devices, the next over the replicas (if any); the other axes as
  the compiler likes."""
  if stage_axis is None:
    return x
  lead = (stage_axis,) + ((replica_axes,) if replica_axes else ())
  spec = PartitionSpec(*lead, *[PartitionSpec.UNCONSTRAINED] * (x.ndim - len(lead)))
  return jax.lax.with_sharding_constraint(x, spec)


_LAYER_IN = "pipeline_layer_in"
# A micro-batch of the residual stream, laid out as the layers keep it (with sequence
# parallelism its sequence split over `tensor`): the pipeline's carry and buffer.
_RESIDUAL_ITEM = ("act_batch", "act_res_seq", "act_embed")
# Data movement, casts and sums: re-done in backward rather than kept, under every policy.
# Kept, a stage's layer weights would be stored again every iteration, sliced from its chunks,
# cast, and added their (zero) gradient tap.
_MOVES = (jax.lax.slice_p, jax.lax.dynamic_slice_p, jax.lax.gather_p, jax.lax.squeeze_p,
          jax.lax.reshape_p, jax.lax.transpose_p, jax.lax.broadcast_in_dim_p,
          jax.lax.convert_element_type_p, jax.lax.add_p)


def keep_computed(prim, *_, **__) -> bool:
  """The pipeline's remat policy under remat="none": keep every value a layer computes, except
  data movement, casts and sums."""
  return prim not in _MOVES


def layout(n_layers: int, stages: int, repeats: int = 1) -> np.ndarray:
  """[V, S, Lmax] int: the layer in each slot of each chunk (chunk r S + s on stage s), or -1
  for a padded (identity) slot. See the module docstring for the rule."""
  chunks = stages * repeats
  if chunks - n_layers >= stages:
    raise UserError(f"n_layers={n_layers} cannot fill stage={stages} x pipeline_repeats="
                    f"{repeats} = {chunks} layer chunks (fewer than stage={stages} may stay "
                    "empty)", f"choose stage x pipeline_repeats of at most "
                    f"{n_layers + stages - 1}")
  slots = -(-n_layers // chunks)
  short = chunks * slots - n_layers
  # Stages from both ends in turn: 0, S-1, 1, S-2, ...; round after round for more than S.
  order = list(dict.fromkeys(s for pair in zip(range(stages), range(stages - 1, -1, -1))
                             for s in pair))
  short_chunks = set()
  for k in range(short):
    i, round_ = k % stages, k // stages
    repeat = round_ if i % 2 == 0 else repeats - 1 - round_   # nearest the embedding / head
    short_chunks.add(repeat * stages + order[i])
  table, layer = np.full((chunks, slots), -1), 0
  for c in range(chunks):
    n = slots - (c in short_chunks)
    table[c, :n] = np.arange(layer, layer + n)
    layer += n
  return table.reshape(repeats, stages, slots)


@dataclasses.dataclass(frozen=True)
class Schedule:
  stages: int
  repeats: int         # V: layer chunks per stage (1 = GPipe)
  micro_batches: int   # M
  n_layers: int | None = None   # L, for `waste`

  @property
  def padded(self) -> int:
    return max(self.micro_batches, self.stages)

  @property
  def iterations(self) -> int:
    return self.repeats * self.padded + self.stages - 1

  @property
  def bubble(self) -> float:
    """Idle / busy stage-iterations: (S - 1) / (V * M) when M >= S."""
    busy = self.repeats * self.micro_batches
    return (self.iterations - busy) / busy

  @property
  def layers_per_stage(self) -> list[int]:
    return (layout(self.n_layers, self.stages, self.repeats) >= 0).sum(axis=(0, 2)).tolist()

  @property
  def waste(self) -> float:
    """Padded (identity) layer slots / all slots, when L does not fill them evenly."""
    slots = layout(self.n_layers, self.stages, self.repeats).size
    return (slots - self.n_layers) / slots


def validate(n_layers: int, stages: int, repeats: int, micro_batches: int,
             batch_rows: int) -> Schedule:
  layout(n_layers, stages, repeats)   # a UserError when there are more chunks than layers
  if micro_batches < 1 or batch_rows % micro_batches:
    raise ValueError(f"the batch of {batch_rows} rows cannot be cut into micro_batches="
                     f"{micro_batches}; choose a divisor of {batch_rows}")
  return Schedule(stages, repeats, micro_batches, n_layers)


def pipeline(layer_fn, weights, x_mbtd, aux, *, stages: int, repeats: int = 1,
             stage_axis: str | None = "stage", replica_axes: tuple[str, ...] = (),
             replicas: int = 1, item_axes: tuple = (), keep: tuple[str, ...] | None = (),
             compute_dtype=None, with_stats: bool = False):
  """Runs every micro-batch through all layers; returns [M, ...] like `x_mbtd`.

  layer_fn(layer_weights, x, aux_one) -> x applies ONE layer (weights without the layer axis;
  `aux_one` is `aux` indexed at the micro-batch). With `with_stats`, also returns the number of
  busy stage-iterations measured while running (to check the bubble).

  `item_axes`: the mesh axes of a micro-batch's dimensions after its replica split (rows,
  sequence, ...) in the buffer of micro-batches (default: not split), e.g. the sequence over
  `tensor` with sequence parallelism, as the layers keep their residual stream.

  `keep`: what backward keeps of every layer of every stage iteration besides its input: the
  values `layer_fn` names with `checkpoint_name` in `keep` (() none: each layer is recomputed
  from its input), or None: every value it computes (`keep_computed`). The rest is recomputed
  in backward, one layer at a time; the stage's weights are never kept per iteration.

  `compute_dtype`: the layers' matmul dtype, when narrower than the weights' (fp32 masters,
  bf16 matmuls): the loop then holds the stage's weights in it, half the bytes, and their
  gradients still accumulate in the weights' dtype, fp32, through the loop: each iteration's
  weights get a zero "tap" in that dtype added (nothing on the GPU: XLA drops x + 0), whose
  gradient is the weights' (`_accumulate_in_weights_dtype`).

  `replica_axes` (e.g. ("data", "fsdp")), of `replicas` devices in all, split each micro-batch's
  rows (dimension 1 of `x_mbtd` and of `aux`'s leaves): the weights are then broadcast to one
  copy per replica before the schedule's loop and every replica's work is a `vmap` over them
  with `spmd_axis_name=replica_axes`, so each device accumulates its own rows' weight gradient
  through the whole loop and the replicas' gradients are summed once, after it (the broadcast's
  transpose), instead of being reduced over the replica axes every iteration. The weights must
  arrive gathered over those axes (Llama 3's FSDP mode, or data parallelism).
  """
  R = replicas if replicas > 1 and x_mbtd.shape[1] % replicas == 0 else 1
  replica_axes = tuple(replica_axes) if R > 1 else ()
  M = x_mbtd.shape[0]
  n_layers = jax.tree.leaves(weights)[0].shape[0]
  sched = validate(n_layers, stages, repeats, M, M)
  S, V, P = stages, repeats, sched.padded
  table_vsl = layout(n_layers, S, V)
  real_svl = None if (table_vsl >= 0).all() else jnp.asarray(table_vsl >= 0).swapaxes(0, 1)

  def to_chunks(weights):
    if real_svl is None:   # even: [L, ...] -> [V, S, L / (V S), ...] is a reshape
      chunks = jax.tree.map(lambda w: w.reshape(*table_vsl.shape, *w.shape[1:]), weights)
    else:   # padded slots index past the stack, and the gather fills them with zeros
      index = np.where(table_vsl >= 0, table_vsl, n_layers)
      chunks = jax.tree.map(lambda w: jnp.take(w, index, axis=0, mode="fill", fill_value=0),
                            weights)
    # [V, S, Lmax, ...] -> [S, R, V, Lmax, ...]: each stage's chunks on its devices, one copy
    # per replica (a broadcast: every device already holds its stage's gathered weights).
    return jax.tree.map(
        lambda w: _on_stages(jnp.broadcast_to(w.swapaxes(0, 1)[:, None],
                                              (S, R, V) + w.shape[2:]), stage_axis,
                             replica_axes), chunks)

  if P > M:   # fewer micro-batches than stages: pad with idle ones
    pad = lambda a: jnp.concatenate([a, jnp.zeros((P - M,) + a.shape[1:], a.dtype)])
    x_mbtd, aux = pad(x_mbtd), jax.tree.map(pad, aux)
  # Rows of each micro-batch -> [R, rows / R]: each replica's rows, where its devices hold them.
  by_replica = lambda a: a.reshape(a.shape[0], R, a.shape[1] // R, *a.shape[2:])
  x_mbtd, aux = by_replica(x_mbtd), jax.tree.map(by_replica, aux)
  # The buffer of micro-batches ([P, R, ...]) and the micro-batch entering or leaving it
  # ([R, ...]) lie on every stage, split over the replicas only: writing the last stage's output
  # and reading stage 0's next input then move one micro-batch, never the buffer.
  def on_replicas(a, lead=0):
    if not replica_axes:
      return a
    spec = PartitionSpec(*[None] * lead, replica_axes, *item_axes,
                         *[None] * (a.ndim - lead - 1 - len(item_axes)))
    return jax.lax.with_sharding_constraint(a, spec)

  def replica_compute(chunks_vl, taps_vl, real_vl, x, aux_one, repeat):
    layers = jax.tree.map(lambda w: w[repeat], chunks_vl)
    if taps_vl is not None:
      layers = jax.tree.map(lambda w, tap: w + tap[repeat].astype(w.dtype), layers, taps_vl)
    real_l = None if real_vl is None else real_vl[repeat]

    def one_layer(x, slot):
      layer_weights, real = slot
      y = layer_fn(layer_weights, x, aux_one)
      return (y if real is None else jnp.where(real, y, x)), None

    # The first slot's input is the stage input (kept already); the others' are named, so that
    # backward keeps them and recomputes one layer at a time.
    x = one_layer(x, jax.tree.map(lambda a: a[0], (layers, real_l)))[0]
    named = lambda x, slot: one_layer(checkpoint_name(x, _LAYER_IN), slot)
    return jax.lax.scan(named, x, jax.tree.map(lambda a: a[1:], (layers, real_l)))[0]

  replicated = jax.vmap(replica_compute, in_axes=(0, 0, None, 0, 0, None),
                        spmd_axis_name=replica_axes or None)

  # Each stage iteration is rematerialised under the policy `keep` gives: whatever backward
  # does not keep is recomputed from the stage's weights (loop constants) and its input.
  policy = keep_computed if keep is None else \
      jax.checkpoint_policies.save_only_these_names(_LAYER_IN, *keep)

  @functools.partial(jax.checkpoint, policy=policy)
  def stage_compute(stage_chunks, stage_taps, real_vl, x, aux, repeat, micro_batch):
    aux_one = jax.tree.map(lambda a: a[micro_batch], aux)
    return replicated(stage_chunks, stage_taps, real_vl, x, aux_one, repeat)

  all_stages = jax.vmap(stage_compute, in_axes=(0, 0, 0, 0, None, 0, 0),
                        spmd_axis_name=stage_axis)
  stage_ids = jnp.arange(S)

  def schedule(chunks, taps, x_mbtd, aux):
    """(out [M, ...], busy stage-iterations) of the whole schedule."""
    state_s = _on_stages(jnp.zeros((S,) + x_mbtd.shape[1:], x_mbtd.dtype).at[0].set(x_mbtd[0]),
                         stage_axis, replica_axes)
    iteration = functools.partial(_iteration, chunks, taps, aux)
    (_, buffer_p, busy), _ = jax.lax.scan(
        iteration, (state_s, on_replicas(x_mbtd, lead=1), jnp.int32(0)),
        jnp.arange(sched.iterations))
    return on_replicas(buffer_p, lead=1)[:M].reshape(M, -1, *buffer_p.shape[3:]), busy

  def _iteration(chunks, taps, aux, carry, t):
    state_s, buffer_p, busy = carry
    item_s = t - stage_ids                               # the work item of each stage
    valid_s = (item_s >= 0) & (item_s < V * P)
    item_s = jnp.clip(item_s, 0, V * P - 1)
    out_s = all_stages(chunks, taps, real_svl, state_s, aux, item_s // P, item_s % P)
    # The last stage's output goes back to its micro-batch's slot (the final result after the
    # last trip); stage 0 then takes the next item's input from the buffer.
    slot = item_s[S - 1] % P
    kept = jax.lax.dynamic_index_in_dim(buffer_p, slot, 0, keepdims=False)
    done = jnp.where(valid_s[S - 1], on_replicas(out_s[S - 1]), kept)
    buffer_p = on_replicas(jax.lax.dynamic_update_index_in_dim(buffer_p, done, slot, 0), lead=1)
    next_input = on_replicas(jax.lax.dynamic_index_in_dim(buffer_p, (t + 1) % P, 0,
                                                          keepdims=False))
    state_s = _on_stages(jnp.roll(out_s, 1, axis=0).at[0].set(next_input), stage_axis,
                         replica_axes)
    real_s = valid_s & (item_s % P < M)
    return (state_s, buffer_p, busy + real_s.sum()), None

  narrow = _narrower(weights, compute_dtype)
  if narrow is None or with_stats:
    out, busy = schedule(to_chunks(weights), None, x_mbtd, aux)
    return (out, busy) if with_stats else out
  return _accumulate_in_weights_dtype(lambda w, taps, x, aux: schedule(
      to_chunks(w), None if taps is None else to_chunks(taps), x, aux)[0],
      weights, narrow, x_mbtd, aux)


def _narrower(weights, compute_dtype):
  """weights -> the weights in `compute_dtype` where that is narrower (None: nowhere)."""
  if compute_dtype is None:
    return None
  dtype = jnp.dtype(compute_dtype)
  narrower = lambda w: jnp.issubdtype(w.dtype, jnp.floating) and w.dtype.itemsize > dtype.itemsize
  if not any(narrower(w) for w in jax.tree.leaves(weights)):
    return None
  return lambda weights: jax.tree.map(lambda w: w.astype(dtype) if narrower(w) else w, weights)


def _accumulate_in_weights_dtype(run, weights, narrow, x, aux):
  """run(narrow(weights), None, x, aux), differentiated as run(narrow(weights), taps, x, aux)
  with respect to zero taps in the weights' dtype that every iteration adds to its (narrow)
  weights: the loop's constants stay narrow, and the taps' gradient, accumulated through the
  loop in the weights' dtype (fp32), is the weights' gradient."""

  @jax.custom_vjp
  def accumulated(weights, x, aux):
    return run(narrow(weights), None, x, aux)

  def forward(weights, x, aux):
    held = narrow(weights)
    taps = jax.tree.map(jnp.zeros_like, weights)
    return jax.vjp(lambda taps, x, aux: run(held, taps, x, aux), taps, x, aux)

  accumulated.defvjp(forward, lambda backward, g: backward(g))
  return accumulated(weights, x, aux)


class PipelineStats(Hook):
  """The schedule's idle / busy stage-iterations (`pipeline_bubble`) and padded (identity)
  layer slots / all (`pipeline_waste`) in every metrics row. `schedule`: a Schedule, or a
  function giving the current stage's (stages may differ in their micro-batches)."""
  every = 0   # nothing to do after a step: its fields go into the rows

  def __init__(self, schedule):
    self.schedule = schedule if callable(schedule) else (lambda: schedule)
    self.logged = set()
    self.log_fields()

  def log_fields(self, result=None) -> dict:
    schedule = self.schedule()
    if schedule not in self.logged:
      self.logged.add(schedule)
      log.info("pipeline: %d stages x %d repeats, %d micro-batches, layers per stage %s, "
               "bubble %.3f, padded slots %.3f", schedule.stages, schedule.repeats,
               schedule.micro_batches, schedule.layers_per_stage, schedule.bubble,
               schedule.waste)
    return {"pipeline_bubble": schedule.bubble, "pipeline_waste": schedule.waste}


def pipelined_blocks(stages: int, repeats: int, micro_batches, stage_axis: str = "stage",
                     mesh_shape: dict | None = None, weights_gathered: bool = False):
  """A `Transformer.block_runner`: its stacked blocks as a pipeline of `stages` stages.

  `micro_batches`: a count, or (rows, seq_len) -> count for the batch being run.

  The batch is cut into micro-batches by rows m, m + M, m + 2M, ... (every device keeps its
  share of each). The embedding before and the norm, head and loss after run outside the
  pipeline with the rows split over every device, `stage` included (the rules' `act_batch`);
  inside, rows are split over the other axes and the stages hold the work items.

  `weights_gathered`: the step hands the blocks their weights gathered over the row axes
  (Llama 3's FSDP mode; always true of `data`): the rows' axes of `mesh_shape` then become the
  pipeline's replicas, whose weight gradients are summed once per step, after the loop.
  Otherwise (ZeRO-3) each iteration's chunk gradient is reduce-scattered inside the loop.
  """
  from flax import linen, nnx

  from llama3_jax.model.layers import constrain
  from llama3_jax.model.transformer import kept_names
  from llama3_jax.sharding.rules import logical_to_spec

  def run(blocks, x_btd, rope, segment_bt, index_bt, attend=None):
    graphdef, weights = nnx.split(blocks)
    B = x_btd.shape[0]
    M = micro_batches(*x_btd.shape[:2]) if callable(micro_batches) else micro_batches
    validate(jax.tree.leaves(weights)[0].shape[0], stages, repeats, M, B)
    outer = linen.get_logical_axis_rules()
    inner = tuple((name, _without(axes, stage_axis)) for name, axes in outer)
    replica_axes = _replica_axes(outer, stage_axis, mesh_shape, weights_gathered)
    replicas = int(np.prod([mesh_shape[a] for a in replica_axes])) if replica_axes else 1
    # Inside the replicas' vmap their axes are the vmapped dimension's, never an activation's.
    in_replica = inner
    for axis in replica_axes:
      in_replica = tuple((name, _without(axes, axis)) for name, axes in in_replica)

    def split(a, names):
      a = a.reshape(B // M, M, *a.shape[1:]).swapaxes(0, 1)
      return constrain(a, (None, *names))

    with linen.logical_axis_rules(inner):
      rows = ("act_batch", "act_seq")
      aux = {"rope": tuple(split(a, rows + (None,)) for a in rope),
             "segment": split(segment_bt, rows), "index": split(index_bt, rows)}
      x_mbtd = split(x_btd, _RESIDUAL_ITEM)

    def layer(layer_weights, x_btd, aux_one):
      block = nnx.merge(graphdef, layer_weights)
      return block(x_btd, aux_one["rope"], aux_one["segment"], aux_one["index"], attend=attend)

    with linen.logical_axis_rules(in_replica):
      item_axes = tuple(logical_to_spec(_RESIDUAL_ITEM, in_replica))
      out_mbtd = pipeline(layer, weights, x_mbtd, aux, stages=stages, repeats=repeats,
                          stage_axis=stage_axis, replica_axes=replica_axes, replicas=replicas,
                          item_axes=item_axes, keep=kept_names(blocks.config),
                          compute_dtype=blocks.config.dtype)
    return out_mbtd.swapaxes(0, 1).reshape(x_btd.shape)

  return run


def _replica_axes(rules, stage_axis, mesh_shape, weights_gathered) -> tuple[str, ...]:
  """The mesh axes of the rows inside the pipeline (`act_batch` less `stage`) whose weight
  gradients can be summed once per step: all of them if the weights arrive gathered over them,
  else `data` alone (the weights are replicated over it anyway)."""
  if not rules or mesh_shape is None:
    return ()
  from llama3_jax.sharding.rules import logical_to_spec
  axes = logical_to_spec(("act_batch",), rules)[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  axes = tuple(a for a in axes if a != stage_axis and mesh_shape.get(a, 1) > 1)
  if not weights_gathered:
    axes = tuple(a for a in axes if a == "data")
  return axes


def _without(axes, axis):
  if isinstance(axes, (tuple, list)):
    kept = tuple(a for a in axes if a != axis)
    return kept if len(kept) > 1 else (kept[0] if kept else None)
  return None if axes == axis else axes
