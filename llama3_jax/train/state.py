"""Training state: the model and its optimizer, one nnx.Module split once for a pure jitted step."""

import optax
from flax import nnx


class TrainState(nnx.Module):
  """The model and its optimizer; split once into (graphdef, state) for a pure jitted step."""

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation):
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
