"""The pre-training dry run: real configs validated, the step traced and lowered for GPUs on an
abstract mesh (no devices, nothing allocated), the plan printed. A few seconds each.

The shipped configs' plans (H100, the planner's constants) are held to what this step reaches
as XLA compiles it (issue 28's table; BENCHMARKS.md): each fits its GPUs, at these MFUs or more.
"""

import re

import pytest

from experiments.configs import llama3_8b, llama3_70b, llama3_405b, llama3_405b_128k
from llama3_jax.train.dry_run import dry_run


def headline(report: str) -> tuple[float, float]:
  """(MFU, GiB per device) of a dry run's plan; the plan must say the layout fits."""
  assert "lowered to StableHLO for cuda" in report
  assert re.search(r"^   fits$", report, re.M), report[-600:]
  mfu = float(re.search(r"MFU ([\d.]+)%", report).group(1)) / 100
  gib = float(re.search(r"^\s+total\s+([\d.]+) GiB", report, re.M).group(1))
  return mfu, gib


def test_8b_dry_run_fits_8_gpus():
  report = dry_run(llama3_8b.get_config())
  assert "1. config valid" in report and "on 8 devices" in report
  assert "memory per device" in report
  mfu, gib = headline(report)
  # Was 5,430 GiB (the whole batch in one micro-batch), then 36.5% under full remat.
  assert mfu >= 0.48 and gib < 56


@pytest.mark.slow
def test_70b_dry_run_fits_at_the_planners_best_layout():
  mfu, gib = headline(dry_run(llama3_70b.get_config()))
  assert mfu >= 0.381 and gib < 74   # was 26.8%, then 35.4% under ZeRO-3 over 128


@pytest.mark.slow
def test_405b_dry_runs_fit_meta_layout():
  # 126 layers on 16 stages, interleaved 8 chunks each; gradients summed once per step; the
  # ramp's 1,024-row stages run 8 micro-batches, the 2,048-row one 16 (planned, the largest).
  report = dry_run(llama3_405b.get_config())
  assert "on 16,384 devices" in report and "summed over fsdp once per step" in report
  mfu, gib = headline(report)
  assert mfu >= 0.347 and gib < 73   # was 8.5% and 91 GiB (did not fit), then 13.4%
  for stage in (r"stage 0 \(1,024 x 4,096, M=8\)", r"stage 1 \(1,024 x 8,192, M=8\)"):
    assert re.search(stage + r": [\d.]+ GiB, MFU [\d.]+%, fits", report), report[-800:]
  final = dry_run(llama3_405b.get_config("final"))   # the 16M-token phase alone
  assert headline(final) == (mfu, gib) and "stage 1 (" not in final


@pytest.mark.slow
def test_405b_128k_dry_run_fits_meta_layout():
  # Table 4, row 3: tensor 8 x context 16 x stage 16 x fsdp 8; every length of the extension.
  report = dry_run(llama3_405b_128k.get_config())
  assert "batch 128 x 131,072" in report
  mfu, gib = headline(report)
  assert mfu >= 0.33 and gib < 73
  assert len(re.findall(r"^   stage \d \(.*M=16\): [\d.]+ GiB, MFU [\d.]+%, fits$", report,
                        re.M)) == 3, report[-600:]
