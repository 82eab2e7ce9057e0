"""Small building blocks: parameters with logical axis names, RMSNorm, rotary embeddings, the
LM head's matmul.

Model code names logical axes only (`embed`, `heads`, `act_batch`, ...). Which mesh axis each
name lands on is decided by the sharding rules (llama3_jax/sharding), never here.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen
from flax import nnx

from llama3_jax.model.config import ModelConfig, RopeScaling


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str, ...],
          dtype) -> nnx.Param:
  """A parameter initialised by `init` whose dimensions carry the logical `names`.

  The names are metadata only (no eager sharding): the sharding rules turn them into mesh
  placements where the model is put on a mesh.
  """
  assert len(shape) == len(names), (shape, names)
  value = nnx.with_partitioning(init, names)(rngs.params(), shape, dtype)
  return nnx.Param(value, eager_sharding=False)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Sharding hint on an activation by logical names; a no-op unless rules are active."""
  return linen.with_logical_constraint(x, names)


def constrain_as_logit_rows(x_bt: jax.Array) -> jax.Array:
  """Sharding hint on a per-token array [B, T] (the targets) to lie as the logits' rows and
  positions do; a no-op unless rules are active.

  Where the vocabulary is split over `fsdp` (vocab_over_fsdp) the logits' rows cannot use
  fsdp, so they land on fewer mesh axes than the batch's rows. Left alone, XLA may move the
  logits' big fp32 cotangent to the targets' rows rather than the small targets to the logits':
  in the pipeline layout that was an all-gather of [B, T, V / fsdp] over `stage` every step
  (65 of the step's 77 MB of all-gathers for the peers' tiny model, benchmarks/step_hlo.py).
  """
  rules = linen.get_logical_axis_rules()
  if not rules:
    return x_bt
  spec = linen.logical_to_mesh_axes(("act_batch", "act_seq", "act_vocab"), rules)
  return jax.lax.with_sharding_constraint(x_bt, jax.sharding.PartitionSpec(*spec[:2]))


class RMSNorm(nnx.Module):
  """Root-mean-square norm (no mean subtraction, no bias), computed in fp32."""

  def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), ("embed",), param_dtype)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
  """Inverse frequencies [H/2] of rotary embeddings, with Llama 3.1 scaling when given.

  Computed in float32 like Hugging Face's `_compute_llama3_parameters`, so that logits match.
  """
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
  inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
  if scaling is None:
    return inv_freq
  f32 = np.float32
  old_len = f32(scaling.original_max_position)
  low_wavelen = old_len / f32(scaling.low_freq_factor)
  high_wavelen = old_len / f32(scaling.high_freq_factor)
  wavelen = f32(2 * np.pi) / inv_freq
  # Long wavelengths (low frequencies) are stretched by `factor`; short ones kept.
  factor = f32(scaling.factor)
  scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = ((old_len / wavelen - f32(scaling.low_freq_factor))
            / (f32(scaling.high_freq_factor) - f32(scaling.low_freq_factor)))
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_angles(positions_bt: jax.Array, config: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """cos and sin [B, T, H/2] (fp32) for the given token positions."""
  inv_freq = jnp.asarray(rope_frequencies(config.head_dim, config.rope_theta,
                                          config.rope_scaling))
  angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles_bth), jnp.sin(angles_bth)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
  """Rotates pairs (x[i], x[i + H/2]), the "rotate half" layout that Hugging Face Llama uses.

  Meta's original checkpoints pair (x[2i], x[2i+1]); their HF conversion permutes q/k weights
  into this layout, so HF weights load here without any permutation.
  """
  x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
  cos, sin = cos_bth[:, :, None, :], sin_bth[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_btnh.dtype)


def head_logits(x_btd: jax.Array, w: jax.Array, w_spec: str, dtype) -> jax.Array:
  """fp32 logits [B, T, V] = x [B, T, D] times the head's weights `w` ("dv", or "vd" when tied
  to the embedding), both in the compute `dtype`, accumulated and returned in fp32: the softmax
  over the vocabulary sees full-precision logits.

  Backward: the logits' fp32 cotangent is rounded to `dtype` before the two gradient matmuls
  (which accumulate in fp32, and give w's gradient in w's own dtype, the fp32 master's), as
  every layer's backward already runs in bf16 training. Autodiff of the forward would run both
  in fp32 instead: with a large vocabulary the head is most of a small model's FLOPs, and on
  hardware with bf16 matmuls that doubled the head's backward time. In fp32 it is autodiff's.
  """
  return _head(w_spec, jnp.dtype(dtype), x_btd, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _head(w_spec, dtype, x_btd, w):
  return jnp.einsum(f"btd,{w_spec}->btv", x_btd.astype(dtype), w.astype(dtype),
                    preferred_element_type=jnp.float32)


def _head_fwd(w_spec, dtype, x_btd, w):
  return _head(w_spec, dtype, x_btd, w), (x_btd, w)


def _head_bwd(w_spec, dtype, residuals, g_btv):
  x_btd, w = residuals
  g_btv = g_btv.astype(dtype)
  dx = jnp.einsum(f"btv,{w_spec}->btd", g_btv, w.astype(dtype),
                  preferred_element_type=jnp.float32)
  dw = jnp.einsum(f"btd,btv->{w_spec}", x_btd.astype(dtype), g_btv,
                  preferred_element_type=jnp.float32)
  return dx.astype(x_btd.dtype), dw.astype(w.dtype)


_head.defvjp(_head_fwd, _head_bwd)
