"""Gradient accumulation over micro-batches equals one big batch.

The loss is normalised by the number of unmasked tokens of the whole batch; micro-batches get
very different numbers of masked tokens here, so averaging per micro-batch would fail.
"""

import jax
import numpy as np
import pytest

from llama3_jax.model import ModelConfig
from llama3_jax.sharding import MeshConfig, ShardingConfig
from llama3_jax.train.setup import setup
from tests.helpers import assert_trees_close

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


@pytest.mark.parametrize("fsdp_mode", [pytest.param("zero3", marks=pytest.mark.slow), "llama3"])
def test_four_micro_batches_equal_one_batch(fsdp_mode):
  results, state = [], None
  for micro in (1, 4):
    s = setup(MODEL, MeshConfig(fsdp=8), sharding=ShardingConfig(fsdp_mode), micro_batches=micro)
    state = s.init_state() if state is None else state   # the same parameters for both
    results.append(jax.device_get(s.fns.loss_and_grads(state, batch())))
  (loss, grads), (loss4, grads4) = results
  np.testing.assert_allclose(loss4, loss, rtol=1e-6)
  assert_trees_close(grads4, grads)


@pytest.mark.parametrize("mesh, micro", [
    (MeshConfig(fsdp=8), 4),                                          # this step accumulates
    pytest.param(MeshConfig(stage=2, fsdp=4), 2, marks=pytest.mark.slow),   # the pipeline does
])
def test_llama3_mode_gathers_bf16_and_accumulates_fp32(mesh, micro):
  """gather_dtype="bfloat16" (bf16 matmuls, fp32 masters): the weights are all-gathered in bf16
  and the gradients accumulated and reduced in fp32, bit for bit what gathering the fp32
  masters gives (the model casts every weight to bf16 anyway)."""
  from flax import linen
  model = MODEL.replace(dtype="bfloat16")
  results, state = [], None
  for gather_dtype in (None, "bfloat16"):
    s = setup(model, mesh, sharding=ShardingConfig("llama3", gather_dtype=gather_dtype),
              micro_batches=micro)
    state = s.init_state() if state is None else state
    results.append(jax.device_get(s.fns.loss_and_grads(state, batch())))
  (loss, grads), (loss16, grads16) = results
  np.testing.assert_array_equal(loss16, loss)
  for got, want in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads)):
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
  # Every parameter is laid out gathered over fsdp as a bf16 tensor (in the lowered module: the
  # CPU compiler upcasts bf16 collectives to f32, a GPU's gathers them as they are).
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    lowered = s.fns.train.jitted.lower(state, batch(), np.float32(0)).as_text()
  gathered = [line for line in lowered.splitlines() if "sdy.sharding_constraint" in line
              and "fsdp" not in line and "xbf16>" in line]
  assert len(gathered) >= len(jax.tree.leaves(state["model"])), gathered


@pytest.mark.slow   # the fast core checks the per-stage counts in tests/train/test_configs.py
def test_micro_batches_chosen_by_batch_shape():
  """setup(micro_batches=f): each batch shape runs f(rows, seq_len) micro-batches (a run whose
  stages differ in them), the same bits as a step built with that count."""
  counts = {32: 4, 16: 2}
  s = setup(MODEL, MeshConfig(fsdp=8), sharding=ShardingConfig("llama3"),
            micro_batches=lambda rows, seq_len: counts[rows])
  state = s.init_state()
  for rows, count in counts.items():
    half = jax.tree.map(lambda x: x[:rows], batch())
    fixed = setup(MODEL, MeshConfig(fsdp=8), sharding=ShardingConfig("llama3"),
                  micro_batches=count)
    got, want = (jax.device_get(f.fns.loss_and_grads(state, half)) for f in (s, fixed))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  assert s.fns.loss_and_grads.compilations() == 2
