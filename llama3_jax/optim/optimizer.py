"""AdamW as Llama 3 trains with it: b1 0.9, b2 0.95, weight decay 0.1, clipping at 1.0.

The learning rate is a hyperparameter set by the train step from the token schedule
(`optax.inject_hyperparams`), not a function of the optimizer's step count, so it stays right
across batch-size changes. Weight decay skips 1-D parameters (the RMSNorm scales), as MaxText
and most Llama trainers do; matrices, embeddings included, decay.

With `skip_nonfinite`, Optax's `apply_if_finite` wraps it all: a step whose gradients hold a NaN
or an Inf changes nothing (parameters and moments kept) inside the compiled step, and counts
itself in the optimizer state (`nonfinite_counts`), which the loop reports and acts on
(llama3_jax/runtime/guard.py).
"""

import jax
import optax

# apply_if_finite "gives up" and applies bad updates after this many in a row; the training
# loop rolls back long before (resilience.max_bad_steps), so in effect never.
_NEVER = 2**30


def build_optimizer(weight_decay: float = 0.1, b1: float = 0.9, b2: float = 0.95,
                    eps: float = 1e-8, clip_norm: float = 1.0,
                    skip_nonfinite: bool = False) -> optax.GradientTransformation:
  def is_matrix(params):
    # Stacked layer parameters carry a leading `layers` dim: a stacked norm scale is 2-D.
    def matrix(path, p):
      stacked = any(getattr(k, "key", None) == "blocks" for k in path)
      return p.ndim - int(stacked) > 1
    return jax.tree_util.tree_map_with_path(matrix, params)

  # `mask` is static: inject_hyperparams would otherwise call it as a schedule of the step.
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=is_matrix)
  tx = optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm else adamw
  return optax.apply_if_finite(tx, max_consecutive_errors=_NEVER) if skip_nonfinite else tx


def set_learning_rate(optimizer, lr) -> None:
  """Sets the injected learning rate of an `nnx.Optimizer` built by `build_optimizer`."""
  def find(state):
    if hasattr(state, "hyperparams"):
      return state
    if isinstance(state, tuple):   # a chain, or apply_if_finite's state (a NamedTuple)
      return next(filter(None, map(find, state)), None)
    return None

  state = find(optimizer.opt_state)
  if state is None:
    raise ValueError("the optimizer has no injected learning rate; build it with build_optimizer")
  state.hyperparams["learning_rate"][...] = lr


def nonfinite_counts(train_state) -> dict | None:
  """{"finite": the last update was applied, "skipped_total": updates refused so far}, arrays
  in the state (a split `nnx.State`) of a TrainState whose optimizer skips non-finite steps;
  None when it does not."""
  opt_state = train_state["optimizer"]["opt_state"]
  if "total_notfinite" not in opt_state:
    return None
  return {"finite": opt_state["last_finite"][...],
          "skipped_total": opt_state["total_notfinite"][...]}
