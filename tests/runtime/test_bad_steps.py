"""Bad steps in a real run: a NaN batch is skipped inside the compiled step and counted; K in a
row roll the run back and skip their data; a step that hangs trips the watchdog.
"""

import json
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from llama3_jax.runtime.watchdog import EXIT_HANG
from llama3_jax.train.loop import train
from llama3_jax.train.metrics import read_metrics
from llama3_jax.train.config import run_config
from tests.runtime.tiny_config import get_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def model_at(workdir, step):
  path = (workdir / "checkpoints" / str(step) / "state").resolve()
  state = ocp.StandardCheckpointer().restore(path)
  return [np.asarray(x) for x in jax.tree.leaves(state["model"])]


@pytest.mark.slow   # a fault drill through the real loop
def test_nan_is_skipped_and_counted_and_k_in_a_row_roll_back(tmp_path):
  cfg = get_config()
  # Batch 2 alone: skipped. Batches 4, 5, 6: three in a row -> back to checkpoint 3, and steps
  # 4, 5, 6 read batches 7, 8, 9 instead.
  cfg.faults.nan_batches = "2,4,5,6"
  cfg.resilience.max_bad_steps = 3
  summary = train(run_config(cfg), tmp_path)
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows] == list(range(1, 7))
  assert np.isnan(rows[1]["loss"]) and rows[1]["skipped"] == 1
  assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in rows[2:])
  assert [r["skipped_total"] for r in rows] == [0] + [1] * 5   # counted by the compiled step
  assert [r["rollbacks"] for r in rows] == [0, 0, 0, 1, 1, 1]
  assert summary["rollbacks"] == 1
  # The refused update changed nothing: the parameters after step 2 are those after step 1.
  for before, after in zip(model_at(tmp_path, 1), model_at(tmp_path, 2), strict=True):
    np.testing.assert_array_equal(before, after)
  meta = json.loads((tmp_path / "checkpoints" / "6" / "meta" / "metadata").read_text())
  assert meta["data_skip"] == 3 and meta["rollbacks"] == 1
  goodput = summary["goodput"]
  assert goodput["skipped_s"] > 0 and goodput["restore_s"] > 0


@pytest.mark.slow
def test_a_hung_step_dumps_stacks_and_exits_for_a_restart(job_env, tmp_path):
  command = [sys.executable, "-m", "experiments.pretrain", "--config=tests/runtime/tiny_config.py",
             f"--workdir={tmp_path}", "--config.runtime.watchdog_s=3",
             "--config.faults.sleep=3:600"]          # step 3 never finishes
  start = time.monotonic()
  result = subprocess.run(command, cwd=ROOT, env=job_env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == EXIT_HANG, result.stderr[-3000:]
  assert time.monotonic() - start < 120
  err = result.stderr
  assert "HANG: no training step finished within 3 s (last finished step: 2)" in err
  assert "Current thread" in err and "Thread 0x" in err               # every thread's stack
  assert "in sleep" in err and "faults.py" in err                    # the stuck frame
  assert '"step_in_progress": 3' in err and '"step_dispatched": false' in err
  log = (tmp_path / "logs" / "process_0.log").read_text()
  assert "HANG" in log and "in sleep" in log
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
