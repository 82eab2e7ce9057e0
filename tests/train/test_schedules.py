"""The learning-rate schedule and the stages hit their published values."""

import numpy as np
import pytest

from llama3_jax.optim.schedules import (Stage, lr_schedule, stage_at, tokens_after,
                                        validate_stages)

M = 1024 * 1024


def test_llama3_schedule_values():
  # 405B: peak 8e-5 after 8,000 warm-up steps of 4M tokens, cosine to 8e-7, anneal 40M to 0.
  warmup, total, anneal = 8000 * 4 * M, 15_600_000 * M, 40 * M
  lr = lr_schedule(8e-5, warmup, total, anneal)
  np.testing.assert_allclose(lr(0), 0.0)
  np.testing.assert_allclose(lr(warmup // 2), 4e-5, rtol=1e-5)
  np.testing.assert_allclose(lr(warmup), 8e-5, rtol=1e-5)
  middle = warmup + (total - anneal - warmup) // 2    # cosine midpoint: halfway to the floor
  np.testing.assert_allclose(lr(middle), (8e-5 + 8e-7) / 2, rtol=1e-3)
  np.testing.assert_allclose(lr(total - anneal), 8e-7, rtol=1e-4)
  np.testing.assert_allclose(lr(total - anneal // 2), 4e-7, rtol=1e-3)
  np.testing.assert_allclose(lr(total), 0.0, atol=1e-12)


def test_llama3_batch_ramp():
  stages = [Stage(252 * M, 4 * M, 4096), Stage(2_870_000 * M, 8 * M, 8192),
            Stage(None, 16 * M, 8192)]
  validate_stages(stages, batch_shards=64)
  assert [s.batch_size for s in stages] == [1024, 1024, 2048]
  assert stage_at(stages, 252 * M - 1) == 0 and stage_at(stages, 252 * M) == 1
  assert stage_at(stages, 2_870_000 * M) == 2
  seen = tokens_after(stages, 100)
  assert seen[63] == 252 * M           # 63 steps of 4M tokens end the first stage exactly
  assert seen[64] - seen[63] == 8 * M  # then 8M-token batches


@pytest.mark.parametrize("stages,message", [
    ([Stage(None, 1000, 64)], "not a multiple of seq_len=64"),
    ([Stage(None, 64 * 6, 64)], "6 sequences per batch do not split over data\\*fsdp=4"),
    ([Stage(100, 256, 64), Stage(50, 256, 64)], "until_tokens must increase"),
    ([Stage(None, 256, 64), Stage(None, 256, 64)], "only the last stage"),
])
def test_bad_stages(stages, message):
  with pytest.raises(ValueError, match=message):
    validate_stages(stages, batch_shards=4)
