"""Training state (model + optimizer) created directly in its sharded layout."""

import jax
import optax
from flax import nnx

from llama3_jax.model import ModelConfig, Transformer
from llama3_jax.sharding import state_shardings


class TrainState(nnx.Module):
  """The model and its optimizer; split once into (graphdef, state) for a pure jitted step."""

  def __init__(self, model: Transformer, tx: optax.GradientTransformation):
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


def init_train_state(model_config: ModelConfig, tx, mesh, rules, seed: int = 0):
  """(graphdef, state, shardings) with every array created on its devices, never gathered.

  Random numbers do not depend on the layout (JAX's partitionable threefry), so the same seed
  gives the same parameters on every mesh.
  """
  def build():
    return TrainState(Transformer(model_config, rngs=nnx.Rngs(seed)), tx)

  graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
  shardings = state_shardings(abstract_state, mesh, rules)
  state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
  return graphdef, state, shardings
