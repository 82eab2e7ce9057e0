"""AdamW as Llama 3 trains with it: b1 0.9, b2 0.95, weight decay 0.1, clipping at 1.0.

The learning rate is a hyperparameter set by the train step from the token schedule
(`optax.inject_hyperparams`), not a function of the optimizer's step count, so it stays right
across batch-size changes. Weight decay skips 1-D parameters (the RMSNorm scales), as MaxText
and most Llama trainers do; matrices, embeddings included, decay.
"""

import jax
import optax

def build_optimizer(weight_decay: float = 0.1, b1: float = 0.9, b2: float = 0.95,
                    eps: float = 1e-8, clip_norm: float = 1.0) -> optax.GradientTransformation:
  def is_matrix(params):
    # Stacked layer parameters carry a leading `layers` dim: a stacked norm scale is 2-D.
    def matrix(path, p):
      stacked = any(getattr(k, "key", None) == "blocks" for k in path)
      return p.ndim - int(stacked) > 1
    return jax.tree_util.tree_map_with_path(matrix, params)

  # `mask` is static: inject_hyperparams would otherwise call it as a schedule of the step.
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=is_matrix)
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm else adamw

def set_learning_rate(optimizer, lr) -> None:
  """Sets the injected learning rate of an `nnx.Optimizer` built by `build_optimizer`."""
  state = optimizer.opt_state
  states = (state,) if hasattr(state, "hyperparams") else state   # alone, or in a chain
  for state in states:
    if hasattr(state, "hyperparams"):
      state.hyperparams["learning_rate"][...] = lr
      return
  raise ValueError("the optimizer has no injected learning rate; build it with build_optimizer")
