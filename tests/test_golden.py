"""Golden losses: four launcher runs reproduce the per-step losses and gradient norms kept in
tests/golden/losses.json (how and why: tests/golden/losses.py). A refactor that moves a bit of
the numerics fails here: bit for bit on the CPU model that wrote the file, within the
cross-machine tolerance elsewhere."""

import json
import pathlib

import pytest

from tests.golden import losses

GOLDEN = pathlib.Path(__file__).parent / "golden" / "losses.json"


@pytest.mark.slow
def test_launcher_runs_reproduce_the_golden_losses(tmp_path):
  golden = json.loads(GOLDEN.read_text())
  assert set(golden["runs"]) == {"pretrain", "sft", "dpo", "reward_model"}
  problems = losses.compare(golden, losses.run_all(tmp_path))
  assert not problems, "\n".join(problems)


def test_compare_catches_a_moved_bit():
  golden = {"environment": losses.environment(),
            "runs": {"pretrain": {"loss": [2.0, 1.5], "grad_norm": [1.0, 1.0]}}}
  same = {"pretrain": {"loss": [2.0, 1.5], "grad_norm": [1.0, 1.0]}}
  assert losses.compare(golden, same) == []
  moved = {"pretrain": {"loss": [2.0, 1.5 + 1e-7], "grad_norm": [1.0, 1.0]}}
  assert losses.compare(golden, moved) == [
      "pretrain.loss step 2: 1.5000001, golden 1.5 (bit for bit)"]
  elsewhere = {**golden, "environment": {**golden["environment"], "cpu_flags": "other"}}
  assert losses.compare(elsewhere, moved) == []
  assert losses.compare(elsewhere, {"pretrain": {"loss": [2.0, 1.51], "grad_norm": [1.0, 1.0]}})
