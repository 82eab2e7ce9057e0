"""A new train state: the same bits on any mesh, and the same bits as a default-level jit.

`Setup.init_state` compiles its one-time program at LLVM optimisation level 1 on CPU (a shorter
way to the first step). For the default run's model that changes no bit, so the README's
figures stay reproducible; for other models a few elements may move by one ulp (vectorised and
scalar code round some of the same sums differently), far below any tolerance the equivalence
tests use. The parameters never depend on the layout (JAX's partitionable threefry).
"""

import jax
import numpy as np
from flax import nnx

from experiments.configs import llama3_debug
from llama3_jax.model import ModelConfig
from llama3_jax.sharding import MeshConfig
from llama3_jax.train.config import run_config
from llama3_jax.train.plan import make_plan
from llama3_jax.train.setup import setup

MODEL = ModelConfig(vocab_size=96, d_model=40, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=10,
                    ffn_dim=72)
DEFAULT_LEVEL = {"xla_backend_optimization_level": 3}   # XLA's own default


def host(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def assert_same_bits(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def test_init_state_is_compiled_at_level_1_unless_xla_flags_say(monkeypatch):
  s = setup(MODEL, MeshConfig(fsdp=8))
  # (conftest.py sets level 0 for every test program: that choice wins)
  assert s.init_compiler_options() is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert s.init_compiler_options() == {"xla_backend_optimization_level": 1}


def test_default_runs_init_has_the_bits_of_a_default_level_jit(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  run = run_config(llama3_debug.get_config())
  plan = make_plan(run, jax.device_count(), 1, None)
  s = setup(plan.model, plan.mesh, sharding=plan.sharding)
  plain = jax.jit(lambda: nnx.split(s.build())[1], out_shardings=s.shardings,
                  compiler_options=DEFAULT_LEVEL)()
  ours = host(s.init_state())
  assert_same_bits(ours, host(plain))
  assert max(np.abs(x).max() for x in ours) > 0   # there are bits to compare


def test_init_state_is_the_same_on_any_mesh():
  one = setup(MODEL, MeshConfig(fsdp=1), devices=jax.devices()[:1]).init_state()
  for mesh in (MeshConfig(fsdp=8), MeshConfig(fsdp=2, tensor=2, data=2)):
    assert_same_bits(host(setup(MODEL, mesh).init_state()), host(one))
