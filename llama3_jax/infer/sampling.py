"""Choosing the next token: greedy, temperature, top-k and top-p, seeded per request.

    tokens_b = sample(logits_bv, seed_b, sample_b, step_b, temperature_b, top_k_b, top_p_b)

Every argument is per row, so one compiled program serves a batch of requests with different
settings. Row b draws with the key fold_in(fold_in(key(seed_b), sample_b), step_b): the same
request (seed, sample number, step) gets the same draw in whatever batch it runs, and the K
samples of one prompt differ by their sample number. temperature 0 is greedy (argmax); top_k 0
and top_p 1 keep every token. Top-k then top-p are applied to the temperature-scaled
distribution, as in Hugging Face's `generate` (top-p keeps the smallest set of most likely
tokens whose probability reaches p, always at least one).
"""

import jax
import jax.numpy as jnp


def truncated_logits(logits_bv, temperature_b, top_k_b, top_p_b):
  """Scaled logits with the tokens outside top-k / top-p at -inf (fp32)."""
  V = logits_bv.shape[-1]
  scaled_bv = logits_bv.astype(jnp.float32) / jnp.maximum(temperature_b, 1e-6)[:, None]
  sorted_bv = -jnp.sort(-scaled_bv, axis=-1)                       # descending
  rank_v = jnp.arange(V)
  in_k_bv = (top_k_b[:, None] <= 0) | (rank_v[None] < top_k_b[:, None])
  sorted_bv = jnp.where(in_k_bv, sorted_bv, -jnp.inf)
  probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
  before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv             # mass of the better tokens
  in_p_bv = (before_bv < top_p_b[:, None]) | (rank_v[None] == 0)
  # The smallest kept logit of each row: every token at or above it survives (ties included).
  threshold_b = jnp.min(jnp.where(in_k_bv & in_p_bv, sorted_bv, jnp.inf), axis=-1)
  return jnp.where(scaled_bv >= threshold_b[:, None], scaled_bv, -jnp.inf)


def row_keys(seed_b, sample_b, step_b):
  return jax.vmap(lambda s, j, t: jax.random.fold_in(
      jax.random.fold_in(jax.random.key(s), j), t))(seed_b, sample_b, step_b)


def sample(logits_bv, seed_b, sample_b, step_b, temperature_b, top_k_b, top_p_b):
  """The next token of every row [B] (int32)."""
  greedy_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)

  def draw(_):
    keys = row_keys(seed_b, sample_b, step_b)
    truncated_bv = truncated_logits(logits_bv, temperature_b, top_k_b, top_p_b)
    drawn_b = jax.vmap(jax.random.categorical)(keys, truncated_bv).astype(jnp.int32)
    return jnp.where(temperature_b > 0, drawn_b, greedy_b)

  # The sort over the vocabulary (128K entries) costs more than a decode step of a small model:
  # only when some row samples.
  return jax.lax.cond(jnp.any(temperature_b > 0), draw, lambda _: greedy_b, None)
