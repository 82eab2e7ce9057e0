"""Pipeline parallelism: the schedules equal running the layers in sequence, with any layer count
(padded layouts); the bubble and waste formulas; the layout rule.

A toy residual layer (x + tanh(x A + b) * scale[m], the scale a per-micro-batch side input)
keeps these checks fast; tests/parallel/test_pipeline_model.py runs the Llama 3 model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama3_jax.errors import UserError
from llama3_jax.parallel.pipeline import Schedule, layout, pipeline, validate
from llama3_jax.sharding import MeshConfig, make_mesh

L, D, ROWS, T = 8, 6, 2, 3


def layer(w, x, aux):
  return x + jnp.tanh(x @ w["a"] + w["b"]) * aux["scale"][0]


def sequential(weights, x_mbtd, aux):
  def one(x, a):
    for i in range(jax.tree.leaves(weights)[0].shape[0]):
      x = layer(jax.tree.map(lambda w: w[i], weights), x, a)
    return x
  return jax.vmap(one)(x_mbtd, aux)


@pytest.fixture(scope="module")
def inputs():
  k = jax.random.split(jax.random.key(0), 3)
  weights = {"a": jax.random.normal(k[0], (L, D, D)) * 0.5,
             "b": jax.random.normal(k[1], (L, D)) * 0.1}
  x = jax.random.normal(k[2], (8, ROWS, T, D))
  aux = {"scale": 1.0 + 0.1 * jnp.arange(8, dtype=jnp.float32)[:, None]}
  return weights, x, aux


# The fast core runs four of the 16 (each stage count, each repeat count, micro-batches fewer
# than, equal to and more than the stages); the rest are marked slow.
_FAST_LAYOUTS = {(2, 1, 3), (2, 2, 4)}   # GPipe and interleaved; 4 stages: slow


@pytest.mark.parametrize("stages, repeats, micro_batches", [
    pytest.param(s, v, m, marks=() if (s, v, m) in _FAST_LAYOUTS else pytest.mark.slow)
    for s in (2, 4) for v in (1, 2) for m in (1, 3, 4, 8)])
def test_pipeline_equals_sequential_layers(inputs, stages, repeats, micro_batches):
  weights, x, aux = inputs
  x, aux = x[:micro_batches], jax.tree.map(lambda a: a[:micro_batches], aux)
  loss = lambda out: (out ** 2 * jnp.arange(1, D + 1)).sum()

  def run(weights, x):
    out, busy = pipeline(layer, weights, x, aux, stages=stages, repeats=repeats,
                         with_stats=True)
    return loss(out), (out, busy)

  with jax.set_mesh(make_mesh(MeshConfig(stage=stages, fsdp=-1))):
    (_, (out, busy)), grads = jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))(
        weights, x)
  want = sequential(weights, x, aux)
  want_grads = jax.grad(lambda w, x: loss(sequential(w, x, aux)), argnums=(0, 1))(weights, x)
  # Relative to the largest element, as for the gradients: an element near zero carries the
  # absolute rounding of its larger neighbours (1.5e-5 of a 0.42 among values up to 3.7 seen).
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  # Measured: every stage did each micro-batch's V trips; everything else was idle.
  schedule = Schedule(stages, repeats, micro_batches)
  assert int(busy) == stages * repeats * micro_batches
  idle = stages * schedule.iterations - int(busy)
  assert idle / int(busy) == pytest.approx(schedule.bubble)
  if micro_batches >= stages:    # Llama 3's bubble ratio
    assert schedule.bubble == pytest.approx((stages - 1) / (repeats * micro_batches))


@pytest.mark.parametrize("n_layers", [8, 7])   # even, and padded slots
def test_bf16_stage_weights_accumulate_fp32_gradients(inputs, n_layers):
  """With compute_dtype narrower than the weights, the loop holds them in bf16 and the gradients
  still accumulate in fp32 (zero fp32 taps): the same bits as holding the fp32 weights and
  casting them in every layer."""
  weights, x, aux = inputs
  weights = jax.tree.map(lambda w: w[:n_layers], weights)
  x = x.astype(jnp.bfloat16)

  def cast_layer(w, x, aux):
    w = jax.tree.map(lambda a: a.astype(jnp.bfloat16), w)
    return (x + jnp.tanh(x @ w["a"] + w["b"]) * aux["scale"][0].astype(jnp.bfloat16))

  def loss(weights, x, compute_dtype):
    out = pipeline(cast_layer, weights, x, aux, stages=2, repeats=2, keep=None,
                   compute_dtype=compute_dtype)
    return (out.astype(jnp.float32) ** 2).sum()

  with jax.set_mesh(make_mesh(MeshConfig(stage=2, fsdp=-1))):
    grads = {dtype: jax.jit(jax.grad(loss), static_argnums=2)(weights, x, dtype)
             for dtype in (None, "bfloat16")}
    hlo = jax.jit(jax.grad(loss), static_argnums=2).lower(weights, x, "bfloat16").as_text()
  assert "tensor<2x1x2x2x6x6xbf16>" in hlo   # the loop's weights: [S, R, V, slots, D, D]
  for got, want in zip(jax.tree.leaves(grads["bfloat16"]), jax.tree.leaves(grads[None])):
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, want)


def test_interleaving_shrinks_the_bubble():
  gpipe, interleaved = Schedule(4, 1, 8), Schedule(4, 2, 8)
  assert gpipe.bubble == pytest.approx(3 / 8) and interleaved.bubble == pytest.approx(3 / 16)


def test_stage_outputs_move_by_collective_permute(inputs):
  weights, x, aux = inputs
  run = jax.jit(lambda w, x: pipeline(layer, w, x, aux, stages=4, repeats=2))
  with jax.set_mesh(make_mesh(MeshConfig(stage=4, fsdp=-1))):
    hlo = run.lower(weights, x).compile().as_text()
  assert "collective-permute" in hlo


@pytest.mark.parametrize("n_layers, stages, repeats, micro_batches", [
    (3, 2, 1, 2), pytest.param(5, 2, 2, 3, marks=pytest.mark.slow),
    pytest.param(7, 4, 1, 4, marks=pytest.mark.slow),
    pytest.param(6, 2, 2, 1, marks=pytest.mark.slow),   # L divides S, not V S
    (7, 4, 2, 4),   # one of 8 chunks empty (126 layers in 16 x 8 chunks, in miniature)
    pytest.param(5, 4, 1, 8, marks=pytest.mark.slow)])
def test_uneven_layer_counts_equal_sequential_layers(inputs, n_layers, stages, repeats,
                                                      micro_batches):
  weights, x, aux = inputs
  weights = jax.tree.map(lambda w: w[:n_layers], weights)
  x, aux = x[:micro_batches], jax.tree.map(lambda a: a[:micro_batches], aux)
  loss = lambda out: (out ** 2 * jnp.arange(1, D + 1)).sum()
  run = lambda w, x: loss(pipeline(layer, w, x, aux, stages=stages, repeats=repeats))
  with jax.set_mesh(make_mesh(MeshConfig(stage=stages, fsdp=-1))):
    got, grads = jax.jit(jax.value_and_grad(run, argnums=(0, 1)))(weights, x)
  want, want_grads = jax.value_and_grad(lambda w, x: loss(sequential(w, x, aux)),
                                        argnums=(0, 1))(weights, x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Gradients of the natural [L, ...] stack: the padded slots add nothing to any layer.
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_layout_rule():
  per_stage = lambda t: (t >= 0).sum(axis=(0, 2)).tolist()
  # Llama 3 405B: the first and the last stage one layer fewer (embedding, head).
  assert per_stage(layout(126, 16)) == [7] + [8] * 14 + [7]
  assert Schedule(16, 1, 16, 126).waste == pytest.approx(2 / 128)
  assert per_stage(layout(3, 2)) == [1, 2] and per_stage(layout(7, 4)) == [1, 2, 2, 2]
  # Interleaved: stage 0's first chunk and stage S-1's last are short first, then inward.
  np.testing.assert_array_equal(layout(5, 2, 2), [[[0, -1], [1, 2]], [[3, -1], [4, -1]]])
  assert per_stage(layout(10, 4, 2)) == [2, 3, 3, 2]
  np.testing.assert_array_equal(layout(8, 2, 2).ravel(), np.arange(8))   # even: no padding
  # 126 layers in 8 one-layer chunks per stage: the first and the last stage keep an empty one.
  t = layout(126, 16, 8)
  assert t.shape == (8, 16, 1) and per_stage(t) == [7] + [8] * 14 + [7]
  assert (t[:, 0] < 0).sum() == 1 and (t[:, 15] < 0).sum() == 1
  assert Schedule(2, 2, 4, 8).waste == 0
  for n_layers in range(4, 40):   # near-equal always; every layer once, in natural order
    for stages, repeats in ((4, 1), (2, 2), (3, 1), (4, 2)):
      if n_layers > stages * (repeats - 1):
        t = layout(n_layers, stages, repeats)
        assert max(per_stage(t)) - min(per_stage(t)) <= 1
        np.testing.assert_array_equal(t.ravel()[t.ravel() >= 0], np.arange(n_layers))


def test_layouts_that_cannot_work_are_clear_errors():
  with pytest.raises(UserError, match=r"n_layers=2 cannot fill stage=2 x pipeline_repeats=2"):
    validate(2, 2, 2, 4, 8)   # 2 of 4 chunks empty: a stage without a layer
  with pytest.raises(ValueError, match=r"12 rows cannot be cut into micro_batches=5"):
    validate(8, 2, 2, 5, 12)
