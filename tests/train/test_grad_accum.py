"""Gradient accumulation over micro-batches equals one big batch.

The loss is normalised by the number of unmasked tokens of the whole batch; micro-batches get
very different numbers of masked tokens here, so averaging per micro-batch would fail.
"""

import jax
import numpy as np
import pytest

from llama3_jax.model import ModelConfig
from llama3_jax.optim.optimizer import build_optimizer
from llama3_jax.sharding import MeshConfig, ShardingConfig, make_mesh, make_rules
from llama3_jax.train.state import init_train_state
from llama3_jax.train.step import make_step_fns

MODEL = ModelConfig(vocab_size=64, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2,
                    head_dim=6, ffn_dim=40, init_std=0.2)


def batch():
  r = np.random.RandomState(0)
  tokens = r.randint(0, MODEL.vocab_size, (32, 13))
  mask = np.ones((32, 12), np.float32)
  # Rows m, m+4, ... form micro-batch m: give each a different amount of masked targets.
  for row in range(32):
    mask[row, : 3 * (row % 4)] = 0
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}


@pytest.mark.parametrize("fsdp_mode", ["zero3", "llama3"])
def test_four_micro_batches_equal_one_batch(fsdp_mode):
  mesh_config, sharding = MeshConfig(fsdp=8), ShardingConfig(fsdp_mode)
  mesh = make_mesh(mesh_config)
  rules = make_rules(MODEL, mesh_config.sizes(8), sharding)
  graphdef, state, shardings = init_train_state(MODEL, build_optimizer(), mesh, rules)
  results = []
  for micro in (1, 4):
    fns = make_step_fns(graphdef, shardings, mesh, rules, sharding, micro_batches=micro)
    results.append(jax.device_get(fns.loss_and_grads(state, batch())))
  (loss, grads), (loss4, grads4) = results
  np.testing.assert_allclose(loss4, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads4), jax.tree.leaves(grads), strict=True):
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
