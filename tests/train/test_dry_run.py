"""The pre-training dry run: real configs validated, the step traced and lowered for GPUs on an
abstract mesh (no devices, nothing allocated), the plan printed. A few seconds each."""

import pytest

from experiments.configs import llama3_8b, llama3_70b, llama3_405b
from llama3_jax.train.dry_run import dry_run


def test_8b_dry_run_lowers_and_plans():
  report = dry_run(llama3_8b.get_config())
  assert "1. config valid" in report and "lowered to StableHLO for cuda on 8 devices" in report
  assert "MFU" in report and "memory per device" in report


@pytest.mark.slow
def test_70b_and_405b_variant_dry_runs():
  assert "lowered to StableHLO for cuda on 128 devices" in dry_run(llama3_70b.get_config())
  # The real 405B (126 layers on 16 stages) waits for the uneven pipeline; 128 layers and the
  # 16M-token stage alone (the 4M-token stage's 1,024 rows do not split over fsdp x stage).
  cfg = llama3_405b.get_config()
  cfg.model.n_layers = 128
  cfg.train.micro_batches = 16
  cfg.train.stages = (dict(until_tokens=None, batch_tokens=16 * 2**20, seq_len=8192,
                           mixture=None),)
  report = dry_run(cfg)
  assert "lowered to StableHLO for cuda on 16,384 devices" in report and "fits" in report
