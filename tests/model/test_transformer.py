"""Model behaviour: document mask, scan vs unrolled, remat, blockwise inside the model.

Equivalences are checked on logits and on gradients of a loss, in fp32 with 1e-5 relative
tolerance (the variants differ only in summation order or recomputation).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llama3_jax.model import ModelConfig, Transformer
from llama3_jax.model.transformer import segment_positions

CONFIG = ModelConfig(vocab_size=101, d_model=36, n_layers=3, n_heads=6, n_kv_heads=2,
                     head_dim=10, ffn_dim=68, max_seq_len=64, init_std=0.2)
SEGMENTS = np.repeat([[0, 1, 2]], [7, 11, 5], axis=1).repeat(2, axis=0)   # [2, 23]


@nnx.jit
def forward(model, *args):
  return model(*args)


def model_with(config, **changes):
  return Transformer(config.replace(**changes), rngs=nnx.Rngs(0))


@functools.cache
def scanned_reference_loss_and_grads():
  return loss_and_grads(model_with(CONFIG), tokens(), SEGMENTS)


def tokens(B=2, T=23, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, CONFIG.vocab_size, (B, T)))


def loss_and_grads(model, tokens_bt, segment_ids=None):
  def loss_fn(model):
    logits = model(tokens_bt[:, :-1], segment_ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens_bt[:, 1:]).mean()
  return nnx.jit(nnx.value_and_grad(loss_fn))(model)


def assert_trees_close(a, b, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert np.abs(x - y).max() <= rtol * max(np.abs(y).max(), 1e-6)


def test_logits_shape_and_dtype_bf16_compute():
  model = model_with(CONFIG, dtype="bfloat16")
  logits = forward(model, tokens())
  assert logits.shape == (2, 23, 101) and logits.dtype == jnp.float32
  assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32


@pytest.mark.parametrize("attention", ["reference", "blockwise"])
def test_document_mask_equals_documents_run_alone(attention):
  model = model_with(CONFIG, attention=attention, attention_block_q=8, attention_block_kv=8)
  doc_a, doc_b = tokens(1, 9, seed=1), tokens(1, 14, seed=2)
  packed = jnp.concatenate([doc_a, doc_b], axis=1)
  segments = jnp.asarray([[3] * 9 + [7] * 14])
  logits = forward(model, packed, segments)
  np.testing.assert_allclose(logits[:, :9], forward(model, doc_a), atol=1e-5)
  np.testing.assert_allclose(logits[:, 9:], forward(model, doc_b), atol=1e-5)
  # Explicit positions give the same as the ones derived from segment ids.
  positions = jnp.asarray([list(range(9)) + list(range(14))])
  np.testing.assert_array_equal(forward(model, packed, segments, positions), logits)


def test_segment_positions_restart_per_document():
  seg = jnp.asarray([[1, 1, 2, 2, 2, 0, 0], [5, 5, 5, 5, 5, 5, 5]])
  np.testing.assert_array_equal(segment_positions(seg),
                                [[0, 1, 0, 1, 2, 0, 1], [0, 1, 2, 3, 4, 5, 6]])


@pytest.mark.parametrize("changes", [
    dict(scan_layers=False),
    dict(remat="full"),
    dict(remat="save_names"),
    dict(remat="minimal"),
    dict(fused_matmuls=True),
    dict(remat="minimal", attention="blockwise", attention_block_q=8, attention_block_kv=16),
    dict(scan_layers=False, remat="full"),
    dict(attention="blockwise", attention_block_q=8, attention_block_kv=16),
])
def test_variant_equals_scanned_reference(changes):
  loss, grads = scanned_reference_loss_and_grads()
  loss2, grads2 = loss_and_grads(model_with(CONFIG, **changes), tokens(), SEGMENTS)
  np.testing.assert_allclose(loss2, loss, rtol=1e-5)
  assert_trees_close(nnx.state(grads2), nnx.state(grads))


def test_same_seed_same_model_different_seed_differs():
  a = nnx.state(Transformer(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
  b = nnx.state(Transformer(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
  c = nnx.state(Transformer(CONFIG, rngs=nnx.Rngs(1)), nnx.Param)
  for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(jax.tree.leaves(a)[-1], jax.tree.leaves(c)[-1])
  # Layers are initialised independently, not copies of one another.
  wq = nnx.state(Transformer(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)["blocks"]["attn"]["wq_dnh"]
  assert not np.array_equal(wq[0], wq[1])
