"""Where inference and evaluation run: the model's parameters on a mesh, the rows of each batch
over the mesh's data-like axes, the results back on every process.

    placement = Placement.make(MeshConfig(fsdp=-1), model.config)   # all devices, FSDP
    model = placement.put_model(model)          # parameters sharded by the training rules
    x_bt = placement.rows(np_x_bt)              # rows split over data x fsdp (x stage)
    with placement.active():                    # the mesh and its logical rules
      y_b = jitted(model, x_bt)
    y_b = placement.fetch(y_b)                  # numpy, the whole array, on every process
    placement = Placement.of(model)             # the mesh a model already lies on (training's)

`Placement()` is one device: every method passes its input through, so code written against a
placement runs unchanged without a mesh. On a mesh that spans several processes (a job started
by launch.local, SLURM or Kubernetes) every process builds the same numpy batch and hands it to
`rows`, which keeps the rows its devices hold; `fetch` gathers a result to every process, so
they all go on with the same values and process 0 writes them (llama3_jax/runtime/job.py).
"""

import contextlib
import dataclasses
import math

import jax
import numpy as np
from flax import linen
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llama3_jax.sharding import MeshConfig, ShardingConfig, make_mesh, make_rules, validate
from llama3_jax.sharding.rules import Rules, logical_to_spec, state_shardings


@dataclasses.dataclass(frozen=True)
class Placement:
  mesh: jax.sharding.Mesh | None = None
  rules: Rules | None = None

  @classmethod
  def make(cls, mesh_config: MeshConfig, model_config, *, devices=None,
           sharding: ShardingConfig = ShardingConfig()) -> "Placement":
    """A mesh over `devices` (default: all of the job's), checked against the model like
    training's (ValueError naming the fix)."""
    devices = jax.devices() if devices is None else list(devices)
    sizes = validate(mesh_config, model_config, n_devices=len(devices))
    return cls(make_mesh(mesh_config, devices), make_rules(model_config, sizes, sharding))

  @classmethod
  def of(cls, model) -> "Placement":
    """The mesh `model`'s parameters lie on (e.g. a training state's), with the training rules
    for its activations; `Placement()` where they are not on a mesh."""
    leaf = next(iter(jax.tree.leaves(nnx.state(model))), None)
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
      return cls()
    mesh = sharding.mesh
    return cls(mesh, make_rules(model.config, dict(mesh.shape)))

  @property
  def row_axes(self) -> tuple[str, ...]:
    """The mesh axes a batch's rows are split over (the rules' `act_batch`)."""
    if self.mesh is None:
      return ()
    spec = logical_to_spec(("act_batch",), self.rules)[0]
    return spec if isinstance(spec, tuple) else (spec,) if spec else ()

  @property
  def row_shards(self) -> int:
    """How many pieces a batch's rows are split into: batches need a multiple of it."""
    return math.prod(self.mesh.shape[a] for a in self.row_axes) if self.mesh else 1

  def padded_rows(self, rows: int) -> int:
    """`rows` rounded up to a multiple of `row_shards`."""
    return -(-rows // self.row_shards) * self.row_shards

  def put_model(self, model):
    """A copy of `model` with its parameters sharded by the rules (`model` itself without a
    mesh)."""
    if self.mesh is None:
      return model
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, self.put_state(state))

  def put_state(self, state):
    """A model's state (nnx.State) sharded by the rules."""
    if self.mesh is None:
      return state
    return self.put(state, state_shardings(state, self.mesh, self.rules))

  def put(self, tree, shardings):
    """`tree`'s arrays on `shardings`. Where the mesh spans processes and an array is whole on
    one of this process's devices (a model read by one process), it goes through host memory:
    every process holds the same values and keeps its own shards."""
    def put_one(x, sharding):
      if (isinstance(x, jax.Array) and x.is_fully_addressable
          and not sharding.is_fully_addressable):
        x = np.asarray(x)
      return jax.device_put(x, sharding)
    return jax.tree.map(put_one, tree, shardings)

  def rows(self, x):
    """A global array of `x` (numpy, the same on every process) with its rows (first
    dimension) split over the row axes; the rest of each row whole."""
    if self.mesh is None:
      return jax.numpy.asarray(x)
    spec = PartitionSpec(self.row_axes or None)
    return jax.device_put(np.asarray(x), NamedSharding(self.mesh, spec))

  def replicated(self, x):
    """A global array of `x` (numpy) whole on every device."""
    if self.mesh is None:
      return jax.numpy.asarray(x)
    return jax.device_put(np.asarray(x), NamedSharding(self.mesh, PartitionSpec()))

  def fetch(self, tree):
    """`tree`'s arrays as numpy, whole, on every process (gathered across processes)."""
    def one(x):
      if isinstance(x, jax.Array) and not x.is_fully_addressable and not (
          x.sharding.is_fully_replicated):
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
      return np.asarray(x)
    return jax.tree.map(one, tree)

  @contextlib.contextmanager
  def active(self):
    """The mesh and its logical rules, for tracing and running the model's programs."""
    if self.mesh is None:
      yield
      return
    with jax.set_mesh(self.mesh), linen.logical_axis_rules(self.rules):
      yield
