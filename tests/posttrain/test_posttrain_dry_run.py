"""Post-training dry runs: SFT's and DPO's real step traced and lowered on an abstract mesh,
with the planner's memory per device (DPO's frozen reference included); the shipped 70B SFT and
405B DPO configs plan and fit. Nothing is read from init.path but a model config."""

import re
import subprocess
import sys

import pytest

from experiments.configs import dpo, sft
from llama3_jax.objectives import NEXT_TOKEN
from llama3_jax.objectives.dpo import DPOLoss
from llama3_jax.train.dry_run import dry_run
from tests.runtime.conftest import ROOT


def small(config):
  """A debug-sized model on 8 abstract devices, from a starting model that does not exist."""
  config.init.path = "/nowhere/sft"   # never read: the size is given
  config.model.size = "debug"
  config.mesh.update(fsdp=4, tensor=2)
  return config


def memory(report: str, line: str) -> float:
  return float(re.search(line + r"\s+([\d.]+) GiB", report).group(1))


def test_dpo_dry_run_traces_the_step_with_its_frozen_reference():
  report = dry_run(small(dpo.get_config()), 8, objective=DPOLoss(reference="in_step"))
  assert "3. train step traced" in report and "lowered to StableHLO" in report
  share = re.search(r"\+ frozen reference ([\d.]+) GiB per device \(parameters ([\d.]+), "
                    r"gathered weights ([\d.]+); forward only\) = ([\d.]+) GiB: fits", report)
  assert share, report
  reference, parameters, gathered, total = map(float, share.groups())
  assert parameters == pytest.approx(memory(report, "parameters"), abs=0.01)
  assert total == pytest.approx(memory(report, "total") + reference, abs=0.01)
  # SFT's step has no reference: the same model, the plan's total alone.
  sft_report = dry_run(small(sft.get_config()), 8, objective=NEXT_TOKEN)
  assert "frozen reference" not in sft_report and "fits" in sft_report


@pytest.mark.slow   # two launchers, and the 405B step traced on 16,384 abstract devices
@pytest.mark.parametrize("launcher, config, devices", [
    ("sft", "sft_llama3_70b.py", "64 devices, model llama3.1-70b"),
    ("dpo", "dpo_llama3_405b.py", "16,384 devices, model llama3-405b")])
def test_shipped_post_training_configs_plan_and_fit(launcher, config, devices):
  result = subprocess.run(
      [sys.executable, "-m", f"experiments.{launcher}", "--config",
       f"experiments/configs/{config}", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert devices in out and "lowered to StableHLO" in out
  assert "\n   fits" in out, out
  if launcher == "dpo":
    assert re.search(r"\+ frozen reference [\d.]+ GiB per device .* GiB: fits", out), out
