"""The sharded train step: loss, gradients (fp32) and the optimizer update in one jit.

    fns = make_step_fns(graphdef, shardings, mesh, rules, ShardingConfig(fsdp_mode="llama3"))
    state, metrics = fns.train(state, batch)

A batch is a dict of [B, T] arrays: `inputs`, `targets`, and optionally `segment_ids`,
`positions` and `loss_mask` (1 where a target counts).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llama3_jax.sharding.rules import ShardingConfig, batch_spec, without_axis


def loss_fn(model, batch):
  """Mean next-token cross-entropy over the targets the loss mask keeps."""
  logits_btv = model(batch["inputs"], batch.get("segment_ids"), batch.get("positions"))
  ce_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, batch["targets"])
  mask_bt = batch.get("loss_mask", jnp.ones_like(ce_bt))
  tokens = mask_bt.sum()
  return (ce_bt * mask_bt).sum() / jnp.maximum(tokens, 1), tokens


@dataclasses.dataclass(frozen=True)
class StepFns:
  train: Callable            # (state, batch) -> (state, metrics); state is donated
  loss_and_grads: Callable   # (state, batch) -> (loss, grads of the parameters)
  batch_sharding: NamedSharding


def make_step_fns(graphdef, shardings, mesh, rules,
                  config: ShardingConfig = ShardingConfig()) -> StepFns:
  """Jitted step functions with the state's shardings in and out."""
  if mesh.shape["stage"] > 1:
    raise ValueError(f"The mesh has stage={mesh.shape['stage']}, but pipeline parallelism is "
                     "not implemented yet; put those devices on fsdp or data instead")
  param_shardings = nnx.state(nnx.merge(graphdef, shardings, copy=True).model, nnx.Param)
  # Llama 3 FSDP mode: gather every weight once, before the forward pass. Autodiff keeps the
  # gathered weights for backward (no second all-gather) and the transpose of the gather
  # reduce-scatters the gradients back to their FSDP shards.
  gathered = None
  if config.fsdp_mode == "llama3":
    gathered = jax.tree.map(lambda s: NamedSharding(mesh, without_axis(s.spec, "fsdp")),
                            param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))

  def grads_of(state, batch):
    model_def, params = nnx.split(nnx.merge(graphdef, state).model)

    def loss_of(params):
      if gathered is not None:
        params = jax.lax.with_sharding_constraint(params, gathered)
      return loss_fn(nnx.merge(model_def, params), batch)

    (loss, tokens), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    return loss, tokens, grads

  def train(state, batch):
    loss, tokens, grads = grads_of(state, batch)
    train_state = nnx.merge(graphdef, state)
    train_state.optimizer.update(train_state.model, grads)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "loss_tokens": tokens}
    return nnx.state(train_state), metrics

  def loss_and_grads(state, batch):
    loss, _, grads = grads_of(state, batch)
    return loss, grads

  batch_sharding = NamedSharding(mesh, batch_spec(rules))
  train_jit = jax.jit(train, in_shardings=(shardings, batch_sharding),
                      out_shardings=(shardings, None), donate_argnums=0)
  grads_jit = jax.jit(loss_and_grads, in_shardings=(shardings, batch_sharding),
                      out_shardings=(None, param_shardings))

  def in_context(fn):
    # The model's logical activation constraints resolve against these rules and this mesh
    # while the step traces.
    def run(*args):
      with jax.set_mesh(mesh), linen.logical_axis_rules(rules):
        return fn(*args)
    run.jitted = fn
    return run

  return StepFns(in_context(train_jit), in_context(grads_jit), batch_sharding)
