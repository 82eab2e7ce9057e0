"""The model family hits requested sizes, grows depth with size, and counts FLOPs as MFU does."""

import jax
import numpy as np
import pytest
from flax import nnx

from llama3_jax.model import Transformer
from llama3_jax.scaling import family
from llama3_jax.train import metrics


@pytest.mark.parametrize("target", np.geomspace(15_000, 5_000_000, 25).tolist())
def test_hits_requested_size_within_3_percent(target):
  config = family.family_config(target)
  assert family.matmul_params(config) == pytest.approx(target, rel=0.03)
  assert config.head_dim == family.HEAD_DIM and config.vocab_size == family.VOCAB
  assert config.n_heads == family.KV_GROUPS * config.n_kv_heads   # GQA kept


def test_depth_and_width_grow_together():
  configs = [family.family_config(t) for t in np.geomspace(20_000, 5_000_000, 12)]
  layers = [c.n_layers for c in configs]
  widths = [c.d_model for c in configs]
  assert layers[-1] >= 3 * layers[0] and widths[-1] >= 8 * widths[0]
  assert all(b >= a - 1 for a, b in zip(layers, layers[1:]))   # at most a one-layer dip


def test_flops_per_token_are_the_launchers():
  for target in (20_000, 300_000, 2_000_000):
    config = family.family_config(target)
    for seq_len in (128, 1024):
      assert family.flops_per_token(config, seq_len) == metrics.flops_per_token(config, seq_len)
      attention = 12 * config.n_layers * seq_len * config.n_heads * config.head_dim / 2
      assert family.flops_per_token(config, seq_len) == 6 * family.matmul_params(config) \
          + attention


def test_parameter_counts_match_the_built_model():
  config = family.family_config(100_000)
  state = nnx.state(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))), nnx.Param)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  assert total == family.total_params(config)
  assert family.matmul_params(config) == total - config.vocab_size * config.d_model \
      - (2 * config.n_layers + 1) * config.d_model


def test_too_small_a_target_is_a_clear_error():
  with pytest.raises(ValueError, match="below the family's smallest model"):
    family.family_config(5_000)
