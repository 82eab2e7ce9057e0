"""The LM head's matmul (`layers.head_logits`): fp32 logits; in fp32 exactly autodiff's
gradients; in bf16 the backward matmuls take the bf16-rounded cotangent, so gradients stay
within bf16 rounding of the fp32 ones, the weights' gradient in their fp32 master dtype.

Tolerances: bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2%); over a contraction
of 64-96 terms with fp32 accumulation the gradients' relative error measured ~0.5%; 3% of the
largest entry leaves room while a wrong transpose or a dropped term is off by O(1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama3_jax.model.layers import head_logits


def inputs(seed=0):
  r = np.random.RandomState(seed)
  x = jnp.asarray(r.randn(2, 5, 64), jnp.float32)
  w_dv = jnp.asarray(r.randn(64, 96) * 0.1, jnp.float32)
  g = jnp.asarray(r.randn(2, 5, 96), jnp.float32)      # weighs every logit
  return x, w_dv, g


def autodiff(x, w, spec, dtype):
  return jnp.einsum(f"btd,{spec}->btv", x.astype(dtype), w.astype(dtype),
                    preferred_element_type=jnp.float32)


@pytest.mark.parametrize("spec", ["dv", "vd"])
def test_fp32_is_autodiff_exactly(spec):
  x, w, g = inputs()
  w = w if spec == "dv" else w.T
  loss = lambda f: lambda x, w: jnp.sum(f(x, w, spec, jnp.float32) * g)
  ours = jax.grad(loss(head_logits), argnums=(0, 1))(x, w)
  theirs = jax.grad(loss(autodiff), argnums=(0, 1))(x, w)
  np.testing.assert_array_equal(head_logits(x, w, spec, jnp.float32),
                                autodiff(x, w, spec, jnp.float32))
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bf16_logits_are_fp32_and_gradients_within_bf16_rounding():
  x, w, g = inputs(1)
  x16 = x.astype(jnp.bfloat16)
  logits = head_logits(x16, w, "dv", jnp.bfloat16)
  assert logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, autodiff(x16, w, "dv", jnp.bfloat16))  # forward as was
  dx, dw = jax.grad(lambda x, w: jnp.sum(head_logits(x, w, "dv", jnp.bfloat16) * g),
                    argnums=(0, 1))(x16, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  rx, rw = jax.grad(lambda x, w: jnp.sum(autodiff(x, w, "dv", jnp.float32) * g),
                    argnums=(0, 1))(x16.astype(jnp.float32), w)
  for a, b in ((dx, rx), (dw, rw)):
    a, b = np.asarray(a, np.float32), np.asarray(b)
    assert np.abs(a - b).max() <= 0.03 * np.abs(b).max()
