"""AdamW's weight decay reaches matrices (embeddings included) but not RMSNorm scales."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llama3_jax.model import ModelConfig, Transformer
from llama3_jax.optim.optimizer import build_optimizer, set_learning_rate

MODEL = ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                    head_dim=8, ffn_dim=24)


def test_decay_skips_norm_scales_only():
  model = Transformer(MODEL, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, build_optimizer(weight_decay=0.5, clip_norm=0), wrt=nnx.Param)
  set_learning_rate(optimizer, 0.1)
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  zero_grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  optimizer.update(model, zero_grads)    # with zero gradients only weight decay moves weights
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat_before = dict(jax.tree_util.tree_leaves_with_path(before))
  for path, value in jax.tree_util.tree_leaves_with_path(after):
    name = jax.tree_util.keystr(path)
    if "norm" in name:
      np.testing.assert_array_equal(value, flat_before[path], err_msg=name)
    else:
      np.testing.assert_allclose(value, flat_before[path] * (1 - 0.1 * 0.5), rtol=1e-6,
                                 err_msg=name)


def test_non_finite_gradients_change_nothing_and_are_counted():
  from llama3_jax.optim.optimizer import nonfinite_counts
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, build_optimizer(skip_nonfinite=True), wrt=nnx.Param)
  set_learning_rate(optimizer, 0.1)            # found inside apply_if_finite's state
  params = lambda: jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  grads = lambda value: jax.tree.map(lambda p: jnp.full_like(p, value),
                                     nnx.state(model, nnx.Param))
  before = params()
  optimizer.update(model, grads(jnp.nan))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params())):
    np.testing.assert_array_equal(a, b)
  counts = nonfinite_counts(nnx.state(nnx.Dict(optimizer=optimizer)))
  assert not counts["finite"] and counts["skipped_total"] == 1
  optimizer.update(model, grads(1.0))            # a finite step applies again
  assert not np.allclose(jax.tree.leaves(before)[0], jax.tree.leaves(params())[0])
  counts = nonfinite_counts(nnx.state(nnx.Dict(optimizer=optimizer)))
  assert counts["finite"] and counts["skipped_total"] == 1
