"""The size table: exact parameter counts (no memory allocated), logical names, validation."""

import jax
import numpy as np
import pytest
from flax import nnx

from llama3_jax.model import SIZES, ModelConfig, Transformer, ffn_dim

# Exact counts of Meta's released models (../shared/ANCHORS.md).
EXPECTED = {
    "llama3-8b": 8_030_261_248, "llama3.1-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496, "llama3.1-70b": 70_553_706_496,
    "llama3-405b": 405_853_388_800, "llama3.1-405b": 405_853_388_800,
    "llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824,
}
LOGICAL = {"embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers"}


def abstract_params(config):
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  return nnx.state(model, nnx.Param)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count(name):
  leaves = jax.tree.leaves(abstract_params(SIZES[name]))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)   # nothing allocated
  assert sum(int(np.prod(x.shape)) for x in leaves) == EXPECTED[name]


def test_ffn_dims_follow_meta_formula():
  assert ffn_dim(4096, 1.3, 1024) == 14336
  assert ffn_dim(8192, 1.3, 4096) == 28672
  assert ffn_dim(16384, 1.2, 4096) == 53248


@pytest.mark.parametrize("name", ["llama3-405b", "llama3.2-1b", "debug"])
def test_every_parameter_has_logical_names(name):
  state = abstract_params(SIZES[name])
  variables = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert len(variables) == (11 if SIZES[name].tie_embeddings else 12)
  for var in variables:
    names = var.get_metadata()["out_sharding"]
    assert len(names) == len(var.shape) and set(names) <= LOGICAL, names
  stacked = [v for v in variables if v.get_metadata()["out_sharding"][0] == "layers"]
  assert len(stacked) == 9 and all(v.shape[0] == SIZES[name].n_layers for v in stacked)


def test_bad_config_names_the_problem():
  base = SIZES["debug"]
  with pytest.raises(ValueError, match="n_heads=6 is not a multiple of n_kv_heads=4"):
    base.replace(n_heads=6)
  with pytest.raises(ValueError, match="remat='some'"):
    base.replace(remat="some")
  with pytest.raises(ValueError, match="head_dim=7 must be even"):
    base.replace(head_dim=7)
  with pytest.raises(TypeError):
    ModelConfig(**{**base.__dict__, "n_layer": 2})   # typo fails loudly
