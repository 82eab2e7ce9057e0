"""Training state: the model and its optimizer, one nnx.Module split once for a pure jitted step."""

import optax
from flax import nnx


class TrainState(nnx.Module):
  """The model and its optimizer; split once into (graphdef, state) for a pure jitted step.

  `frozen`: modules the objective reads but does not train (DPO's reference model), held and
  checkpointed with the state, sharded like the model, never updated.
  """

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation,
               frozen: nnx.Module | None = None):
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    self.frozen = frozen
