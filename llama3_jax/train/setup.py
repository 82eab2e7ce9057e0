"""Config -> mesh, rules, sharded training state and step functions, in one call.

    s = setup(model_config, MeshConfig(fsdp=4, tensor=2), sharding=ShardingConfig(),
              optimizer=build_optimizer(), micro_batches=2)
    state = s.init_state()                   # every array created on its devices, never gathered
    state = s.init_state(Pretrained(path))   # a starting model read straight onto the layout
    state, metrics = s.fns.train(state, batch, lr)

The launcher (llama3_jax/train/loop.py), the tests, the benchmarks and the notebooks all set a
run up through `setup`. Nothing is allocated until `init_state`: `abstract_state` (arrays as
ShapeDtypeStructs with their shardings) is what a checkpoint restores onto.
"""

import concurrent.futures
import dataclasses
import logging
import os
from typing import Callable

import jax
import numpy as np
from flax import linen
from flax import nnx

from llama3_jax.checkpoint.manager import abstract_like
from llama3_jax.checkpoint.model import Pretrained, load_params
from llama3_jax.checkpoint.target import model_target
from llama3_jax.optim.optimizer import build_optimizer
from llama3_jax.sharding import (MeshConfig, ShardingConfig, make_mesh, make_rules,
                                 state_shardings, validate)
from llama3_jax.sharding.rules import Rules
from llama3_jax.objectives.next_token import NEXT_TOKEN
from llama3_jax.train.state import TrainState
from llama3_jax.train.step import StepFns, make_step_fns

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
  mesh: jax.sharding.Mesh
  rules: Rules
  graphdef: nnx.GraphDef
  shardings: nnx.State           # NamedShardings of every array of the state
  abstract_state: nnx.State      # ShapeDtypeStructs carrying those shardings
  fns: StepFns
  build: Callable[..., TrainState]   # (pretrained=None) -> a new TrainState
  # A pretrained Transformer's parameters as this run lays them out (ShapeDtypeStructs with
  # shardings and the run's dtype): what a starting model is read onto (load_params).
  pretrained_target: nnx.State

  def init_state(self, pretrained: nnx.State | Pretrained | None = None) -> nnx.State:
    """A new state, each array created in its sharded layout. Random numbers do not depend on
    the layout (JAX's partitionable threefry), so a seed gives the same parameters on any mesh.

    `pretrained`: a Transformer's parameters, or where to read them (`Pretrained(path)`: a
    workdir, checkpoint step or Hugging Face directory, read straight onto
    `pretrained_target`, each process only its shards). They replace the random ones in the
    model (the objective's `load_pretrained` says where: a reward model's backbone) and in any
    frozen copy of it (DPO's reference); the optimizer starts fresh."""
    if isinstance(pretrained, Pretrained):
      pretrained = load_params(pretrained.path, self.pretrained_target,
                               averaged=pretrained.averaged)
    elif pretrained is not None:   # arrays on another layout: moved onto the run's
      pretrained = jax.device_put(pretrained, jax.tree.map(lambda x: x.sharding,
                                                           self.pretrained_target))
    return jax.jit(lambda p: nnx.split(self.build(p))[1], out_shardings=self.shardings,
                   compiler_options=self.init_compiler_options())(pretrained)

  def init_compiler_options(self) -> dict | None:
    """XLA options for the one-time init program. It is integer hashing (threefry) and
    elementwise maths: on CPU, LLVM's default optimisation level (3) buys it nothing but costs
    seconds of compile on the way to the first step (2.9 -> 1.0 s at level 1 for the peers'
    tiny model; the same bits for the default run's model, tests/train/test_init_state.py).
    A level set in XLA_FLAGS wins."""
    if (self.mesh.devices.flat[0].platform != "cpu"
        or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "")):
      return None
    return {"xla_backend_optimization_level": 1}

  @property
  def abstract_model(self):
    return self.abstract_state["model"]

  def compile_ahead(self, abstract_batch: dict, also: Callable = lambda: None):
    """Traces and compiles the train step for `abstract_batch` in a background thread (a
    future); `also` runs there afterwards. Meant to overlap restoring or initialising the
    state: the first step then finds the executable in jit's caches, which ahead-of-time
    lowering shares. It pays where compiling is a load from the persistent cache (a relaunch);
    two real compiles at once are no faster on a small CPU (XLA already uses every core). A
    failure only costs the head start: the step compiles when first called."""
    def compile_step():
      try:
        with jax.set_mesh(self.mesh), linen.logical_axis_rules(self.rules):
          self.fns.train.jitted.lower(self.abstract_state, abstract_batch,
                                      np.float32(0)).compile()
      except Exception as error:  # noqa: BLE001 - the first call compiles it instead
        log.warning("compiling ahead failed (%s); the first step compiles", error)
      also()
    return concurrent.futures.ThreadPoolExecutor(1).submit(compile_step)


def abstract_train_state(model_config, optimizer=None, objective=NEXT_TOKEN, seed: int = 0):
  """(graphdef, abstract state, build): the state's shapes and logical axes without devices, for
  a real mesh or an abstract one (planning 16K GPUs on a laptop); `build` makes it for real."""
  tx = build_optimizer() if optimizer is None else optimizer

  def build(pretrained=None):
    rngs = nnx.Rngs(seed)
    model = objective.init_model(model_config, rngs)
    frozen = objective.init_frozen(model_config, rngs)
    if pretrained is not None:
      objective.load_pretrained(model, pretrained)
      if frozen is not None:
        objective.load_pretrained(frozen, pretrained)
    return TrainState(model, tx, frozen)
  graphdef, abstract = nnx.split(nnx.eval_shape(build))
  return graphdef, abstract, build


def setup(model_config, mesh_config: MeshConfig = MeshConfig(), *,
          sharding: ShardingConfig = ShardingConfig(), optimizer=None, objective=NEXT_TOKEN,
          micro_batches=1, seed: int = 0, devices=None, global_batch: int | None = None,
          seq_len: int | None = None) -> Setup:
  """Validates the layout (ValueError naming the fix), then builds everything but the arrays.

  `devices`: default all; `global_batch` / `seq_len`: checked against the mesh when given.
  `micro_batches`: a count, or (rows, seq_len) -> count per batch shape (Plan.micro_batches_for).
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = validate(mesh_config, model_config, n_devices=len(devices), global_batch=global_batch,
                   seq_len=seq_len)
  mesh = make_mesh(mesh_config, devices)
  rules = make_rules(model_config, sizes, sharding)
  graphdef, abstract, build = abstract_train_state(model_config, optimizer, objective, seed)
  shardings = state_shardings(abstract, mesh, rules)
  abstract = abstract_like(abstract, shardings)
  fns = make_step_fns(graphdef, shardings, mesh, rules, sharding, micro_batches, objective)
  _, pretrained = model_target(model_config, "lm", mesh, rules)
  return Setup(mesh, rules, graphdef, shardings, abstract, fns, build, pretrained)
