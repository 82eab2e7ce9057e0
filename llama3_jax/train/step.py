"""The sharded train step: an objective's loss, fp32 gradients (accumulated over micro-batches)
and AdamW.

    fns = make_step_fns(graphdef, shardings, mesh, rules, ShardingConfig(), micro_batches=4)
    state, metrics = fns.train(state, batch, lr)

Built by `llama3_jax.train.setup.setup` (mesh, rules, state and these functions in one call).
A batch is a dict of [B, T] arrays in the objective's format (llama3_jax/objectives/next_token.py;
pre-training: `inputs`, `targets`, `segment_ids`, `positions`, `loss_mask`). The loss is the
objective's loss sum over the whole batch divided by its weight sum over the whole batch
(for cross-entropy: the mean over all unmasked targets), however it is split into micro-batches.

With a context axis (context parallelism), the step permutes each batch once into the
load-balanced chunk order, adding `indices` (each token's index in its row, for the causal mask)
and `positions` if absent, and runs attention under shard_map (llama3_jax/parallel/context.py);
the pipeline and that kernel enter the model through llama3_jax/parallel/parallelize.py;
the loss, a sum over tokens, needs no un-permuting.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import linen
from flax import nnx
from jax.sharding import NamedSharding

from llama3_jax.optim.optimizer import set_learning_rate
from llama3_jax.parallel import context as context_parallel
from llama3_jax.parallel.parallelize import (accumulated_micro_batches, micro_batch_count,
                                             parallelizer)
from llama3_jax.sharding.rules import ShardingConfig, batch_spec, gathered_over_fsdp
from llama3_jax.objectives.next_token import NEXT_TOKEN


@dataclasses.dataclass(frozen=True)
class StepFns:
  train: "InMesh"            # (state, batch, lr) -> (state, metrics); state is donated
  loss_and_grads: "InMesh"   # (state, batch) -> (loss, grads of the parameters)
  batch_sharding: NamedSharding


def make_step_fns(graphdef, shardings, mesh, rules, config: ShardingConfig = ShardingConfig(),
                  micro_batches=1, objective=NEXT_TOKEN) -> StepFns:
  """Jitted step functions with the state's shardings in and out.

  `micro_batches`: a count, or (rows, seq_len) -> count for a batch of that shape (stages that
  differ in it; the step is traced once per batch shape). With a `stage` axis the blocks run as
  a pipeline (llama3_jax/parallel/pipeline.py) of that many micro-batches, instead of
  accumulating gradients over them one by one.
  """
  install = parallelizer(mesh, rules, config, micro_batches)
  counts = micro_batches
  param_shardings = nnx.state(nnx.merge(graphdef, shardings, copy=True).model, nnx.Param)
  batch_sharding = NamedSharding(mesh, batch_spec(rules))
  # Llama 3 FSDP mode: gather every weight once per step, before the first micro-batch (in
  # `gather_dtype`). Autodiff keeps the gathered weights for backward (no second all-gather);
  # gradients accumulate in the gathered layout and are reduce-scattered to their FSDP shards
  # once, in fp32.
  gathered = gathered_over_fsdp(param_shardings) if config.fsdp_mode == "llama3" else None
  context = context_parallel.context_size(mesh, rules)

  def grads_of(state, batch):
    rows, seq_len = next(x.shape for x in batch.values() if x.ndim == 2)
    micro_batches = accumulated_micro_batches(mesh, micro_batch_count(counts, rows, seq_len))
    if context > 1:   # once per batch, before micro-batches: load-balanced chunk order
      batch = context_parallel.reorder_batch(batch, context)
      batch = {name: jax.lax.with_sharding_constraint(x, batch_sharding) if x.ndim == 2 else x
               for name, x in batch.items()}
    train_state = nnx.merge(graphdef, state)
    model_def, params = nnx.split(train_state.model)
    # Read, never differentiated (DPO's reference); split so each trace merges its own copy.
    frozen = None if train_state.frozen is None else nnx.split(train_state.frozen)
    masters = params
    if gathered is not None:
      # Under this step's own micro-batch loop the loop holds the blocks' copy narrow (each
      # micro step's gradient is accumulated in the masters' dtype); otherwise every copy comes
      # back typed as its master, so the pipeline accumulates in that dtype (its loop holds the
      # copy narrow itself).
      held_narrow = _in_blocks if micro_batches > 1 else (lambda path: False)
      params = gather(params, gathered, config.gather_dtype, held_narrow)

    def micro_step(batch):
      def sums(p):
        reference = None if frozen is None else install(nnx.merge(
            frozen[0], jax.lax.stop_gradient(frozen[1])))
        loss_sum, weight_sum, metrics = objective.loss_sums(install(nnx.merge(model_def, p)),
                                                            batch, frozen=reference)
        return loss_sum, (weight_sum, metrics)
      (loss_sum, (weight_sum, metrics)), grads = jax.value_and_grad(sums, has_aux=True)(params)
      return loss_sum, weight_sum, metrics, _cast(grads, masters)

    if micro_batches == 1:
      loss_sum, weight_sum, metrics, grads = micro_step(batch)
    else:
      # Micro-batch m takes rows m, m + M, m + 2M, ...: every device keeps its share of rows.
      def split(x):
        x = x.reshape(x.shape[0] // micro_batches, micro_batches, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, jax.sharding.PartitionSpec(None, *batch_sharding.spec)))

      def accumulate(carry, micro_batch):
        return jax.tree.map(jnp.add, carry, micro_step(micro_batch)), None

      batches = jax.tree.map(split, batch)
      shapes = jax.eval_shape(micro_step, jax.tree.map(lambda x: x[0], batches))
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
      (loss_sum, weight_sum, metrics, grads), _ = jax.lax.scan(accumulate, zeros, batches)

    denominator = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    if gathered is not None:
      grads = jax.lax.with_sharding_constraint(grads, param_shardings)
    metrics = {name: value / denominator for name, value in metrics.items()}
    return loss_sum / denominator, weight_sum, metrics, grads

  def train(state, batch, lr):
    loss, weight, metrics, grads = grads_of(state, batch)
    train_state = nnx.merge(graphdef, state)
    set_learning_rate(train_state.optimizer, lr)
    train_state.optimizer.update(train_state.model, grads)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "loss_tokens": weight}
    return nnx.state(train_state), metrics

  def loss_and_grads(state, batch):
    loss, _, _, grads = grads_of(state, batch)
    return loss, grads

  train_jit = jax.jit(train, in_shardings=(shardings, batch_sharding, None),
                      out_shardings=(shardings, None), donate_argnums=0)
  grads_jit = jax.jit(loss_and_grads, in_shardings=(shardings, batch_sharding),
                      out_shardings=(None, param_shardings))

  return StepFns(InMesh(train_jit, mesh, rules), InMesh(grads_jit, mesh, rules), batch_sharding)


def _cast(tree, like):
  """Every leaf in the dtype of its counterpart in `like`."""
  return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def gather(params, shardings, dtype: str | None = None, held_narrow=lambda path: False):
  """`params` laid out as `shardings` say (Llama 3's mode: gathered over fsdp), moved in `dtype`
  (None: as stored). The copies come back typed as their masters (on the GPU XLA drops the
  cast back where the model casts to `dtype` again), so their gradients are in the masters'
  dtype; except the leaves `held_narrow(path)` names, which stay in `dtype`.

  Held narrow are the stacked blocks' weights under a loop (their gradients come out of the
  same bf16 matmuls either way); the embedding and the head stay typed as their fp32 masters,
  since their gradients are accumulated in the weights' dtype (the lookup's scatter-add, the
  head's matmul)."""
  constrain = jax.lax.with_sharding_constraint
  if dtype is None:
    return constrain(params, shardings)

  def move(path, p, sharding):
    copy = constrain(p.astype(dtype), sharding)
    return copy if held_narrow(path) else copy.astype(p.dtype)
  return jax.tree_util.tree_map_with_path(move, params, shardings)


def _in_blocks(path) -> bool:
  """Whether a parameter path lies in a Transformer's stacked blocks."""
  return any(getattr(key, "key", None) == "blocks" for key in path)


class InMesh:
  """A jitted step function called with its mesh and logical rules in context, so that the
  model's logical activation constraints resolve against them while it traces. `jitted` is the
  jax.jit function itself (to lower or trace ahead of time)."""

  def __init__(self, jitted, mesh, rules):
    self.jitted, self.mesh, self.rules = jitted, mesh, rules

  def __call__(self, *args):
    with jax.set_mesh(self.mesh), linen.logical_axis_rules(self.rules):
      return self.jitted(*args)

  def compilations(self) -> int:
    """Programs compiled so far (one per batch shape), ahead-of-time lowering included."""
    return self.jitted._cache_size()   # jax.jit's only count of its executables
