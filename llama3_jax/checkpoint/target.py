"""Where a model's parameters go when they are read: abstract targets that carry shardings.

    graphdef, target = model_target(config, "lm", mesh)       # FSDP/TP as the rules say
    params = load_params(path, target)                         # checkpoint/model.py: onto it
    model = nnx.merge(graphdef, params)

A target is the module's state as ShapeDtypeStructs, each with the NamedSharding (and dtype) the
parameter must have once read. Readers (Orbax for training checkpoints, safetensors slices for
Hugging Face directories) write each process's shards straight into it: no process holds the
whole model, and no device more than its shard.
"""

import jax
from flax import nnx

from llama3_jax.checkpoint.manager import abstract_like
from llama3_jax.model import ModelConfig, new_module
from llama3_jax.errors import UserError
from llama3_jax.sharding import AXES, MeshConfig, make_rules, state_shardings, validate


def model_target(config: ModelConfig, kind: str = "lm", mesh=None, rules=None, *, device=None):
  """(graphdef, abstract state) of a `kind` module ("lm" or "reward") of `config`, its arrays
  placed by `rules` (default: the model's rule table for the mesh's axis sizes) on `mesh`, one
  of ours (llama3_jax/sharding/mesh.py). Without a mesh: whole, on `device` (default: this
  process's first)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: new_module(config, kind)))
  if mesh is None:
    shardings = jax.tree.map(
        lambda _: jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0]), abstract)
  else:
    sizes = dict(mesh.shape)
    if tuple(mesh.axis_names) == AXES:   # one of ours: a layout that does not fit, said now
      try:
        validate(MeshConfig(**sizes), config, n_devices=mesh.size)
      except ValueError as error:
        raise UserError(str(error), "choose another layout (mesh) for this model") from None
    rules = make_rules(config, sizes) if rules is None else rules
    shardings = state_shardings(abstract, mesh, rules)
  return graphdef, abstract_like(abstract, shardings)


def kind_of(target) -> str:
  """What a target holds: "reward" (a RewardModel: backbone + scalar head) or "lm"."""
  return "reward" if "head_d" in target else "lm"


def shapes(tree) -> dict:
  """{parameter path: shape} of a state (arrays, abstract or Orbax metadata)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): tuple(x.shape)
          for path, x in leaves}
