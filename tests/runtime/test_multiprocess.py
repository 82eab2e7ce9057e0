"""One job over several JAX processes, as users run it: `python -m launch.local ... --
python -m experiments.pretrain`, on the tiny fsdp=4 x tensor=2 config of tiny_config.py.

- 2 processes x 4 devices train like 1 process x 8 devices, evaluate during training like it
  (held-out loss, multiple choice, generation: llama3_jax/infer/placement.py), and checkpoints
  move between them;
- SIGKILL of one process before, during and after checkpoint writes (random steps and
  processes; LLAMA3_FAULT_SEED replays a draw): the launcher restarts the job, which resumes
  from the newest complete checkpoint and ends with the uninterrupted run's losses and
  parameters, bit for bit; the goodput of that run adds up to its wall time;
- a process that stalls is named in the straggler report; every process writes its own log.
A shared JAX compilation cache keeps the restarts' start-up short, as it would on a cluster.
"""

import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from llama3_jax.runtime.goodput import CATEGORIES, Timeline
from llama3_jax.train.metrics import read_metrics

pytestmark = pytest.mark.slow   # subprocess jobs: outside the fast core

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "tests/runtime/tiny_config.py"


def pretrain(job_env, workdir, processes, *overrides, max_restarts=0):
  command = [sys.executable, "-m", "launch.local", "--processes", str(processes), "--devices", "8",
             "--max-restarts", str(max_restarts), "--restart-delay-s", "0", "--",
             sys.executable, "-m", "experiments.pretrain", f"--config={CONFIG}",
             f"--workdir={workdir}", *overrides]
  start = time.time()
  result = subprocess.run(command, cwd=ROOT, env=job_env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  return result, time.time() - start


def losses(workdir):
  return np.array([(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(workdir)])


def params(workdir, step):
  """The parameters of a checkpoint, on one device whatever the processes that wrote it."""
  path = (pathlib.Path(workdir) / "checkpoints" / str(step) / "state").resolve()
  checkpointer = ocp.StandardCheckpointer()
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                        checkpointer.metadata(path).item_metadata.tree)
  return jax.tree.map(np.asarray, checkpointer.restore(path, target)["model"])


# Evaluation during training, at the last step: what the default config does, in miniature.
EVAL = ("--config.eval.every_steps=6", "--config.eval.tasks=heldout,arith,arith_gen",
        "--config.eval.examples=8")


@pytest.fixture(scope="module")
def one_process(job_env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_process")
  pretrain(job_env, workdir, 1, *EVAL)
  return workdir


@pytest.fixture(scope="module")
def two_processes(job_env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two_processes")
  # Process 1 stalls 3 s before step 4: a straggler (it changes no number).
  pretrain(job_env, workdir, 2, "--config.faults.sleep=4:3:p1",
           "--config.resilience.straggler_factor=2", *EVAL)
  return workdir


def test_two_processes_train_like_one(one_process, two_processes):
  one, two = losses(one_process), losses(two_processes)
  # Evaluation during training logs what one process logs: the same scores, the same answers.
  evaluated = [{k: v for k, v in row.items() if k.startswith("eval/")}
               for row in (read_metrics(one_process)[-1], read_metrics(two_processes)[-1])]
  assert {"eval/heldout/loss", "eval/arith/acc", "eval/arith_gen/exact_match"} <= set(
      evaluated[0]) and evaluated[0].keys() == evaluated[1].keys()
  for key, value in evaluated[0].items():
    if key.endswith(("loss", "nll_per_char", "bits_per_byte")):
      assert evaluated[1][key] == pytest.approx(value, rel=1e-5), key
    else:   # accuracies and exact match: the same answers
      assert evaluated[1][key] == value, key
  assert list(one[:, 0]) == list(two[:, 0]) == [1, 2, 3, 4, 5, 6]
  # The same mesh and batches; only the collectives differ (in-process vs. gloo between
  # processes), which may round the last bit of a sum differently.
  np.testing.assert_allclose(two[:, 1:], one[:, 1:], rtol=2e-6, atol=0)
  for a, b in zip(jax.tree.leaves(params(one_process, 6)),
                  jax.tree.leaves(params(two_processes, 6)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def resume_elsewhere(job_env, source, workdir, processes, at=3):
  """A copy of `source` cut back to checkpoint `at`, finished with `processes` processes."""
  shutil.copytree(source / "checkpoints", workdir / "checkpoints")
  for later in range(at + 1, 7):
    shutil.rmtree(workdir / "checkpoints" / str(later))
  result, _ = pretrain(job_env, workdir, processes)
  assert f"resumed from step {at}" in result.stdout + result.stderr
  return losses(workdir)


def test_checkpoints_move_between_process_counts(job_env, one_process, two_processes, tmp_path):
  reference = losses(one_process)[3:, 1:]
  from_two = resume_elsewhere(job_env, two_processes, tmp_path / "two_to_one", 1)
  np.testing.assert_allclose(from_two[:, 1:], reference, rtol=2e-6)
  from_one = resume_elsewhere(job_env, one_process, tmp_path / "one_to_two", 2)
  np.testing.assert_allclose(from_one[:, 1:], reference, rtol=2e-6)


def test_straggler_is_named_and_every_process_logs(two_processes):
  flags = [json.loads(line) for line in
           (two_processes / "stragglers.jsonl").read_text().splitlines()]
  step_4 = [f for f in flags if f["step"] == 4]
  assert step_4 and step_4[0]["processes"] == [1], flags
  assert step_4[0]["host_s"][1] >= 3.0
  assert read_metrics(two_processes)[-1]["straggler_steps"] >= 1
  for process in (0, 1):
    log = (two_processes / "logs" / f"process_{process}.log").read_text()
    assert f"process {process} of 2" in log and "step 6: loss" in log


def test_sigkill_at_random_moments_resumes_bit_for_bit(job_env, two_processes, tmp_path):
  seed = int(os.environ.get("LLAMA3_FAULT_SEED", random.randrange(10**6)))
  rng = random.Random(seed)
  steps = sorted(rng.sample(range(1, 7), 3))
  plan = [(step, moment, rng.randrange(2))
          for step, moment in zip(steps, rng.sample(["before", "during", "after"], 3))]
  kills = ",".join(f"{step}:{moment}:p{process}:a{attempt}"
                   for attempt, (step, moment, process) in enumerate(plan))
  note = f"LLAMA3_FAULT_SEED={seed}: faults.kill={kills}"
  result, wall = pretrain(job_env, tmp_path, 2, f"--config.faults.kill={kills}", max_restarts=3)
  output = result.stdout + result.stderr

  # Each restart resumed from the newest checkpoint that was complete when the process died.
  expected = [step - 1 if moment in ("before", "during") else step for step, moment, _ in plan]
  resumed = [int(s) for s in re.findall(r"\[p0\] .*resumed from step (\d+)", output)]
  assert resumed == [s for s in expected if s > 0], (note, resumed)   # 0: a fresh start
  assert output.count("killed by SIGKILL; stopping the others") == 3, note
  assert "corrupt" not in output, note
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name], note

  # The same losses and parameters as the uninterrupted run, bit for bit.
  np.testing.assert_array_equal(losses(tmp_path), losses(two_processes), err_msg=note)
  for a, b in zip(jax.tree.leaves(params(tmp_path, 6)), jax.tree.leaves(params(two_processes, 6)),
                  strict=True):
    np.testing.assert_array_equal(a, b, err_msg=note)

  # Goodput: four attempts; the categories tile the job's wall time.
  summary = Timeline.read(tmp_path / "goodput.jsonl").summary()
  print(f"{note}\ngoodput of the faulty run: {json.dumps(summary)}")
  assert summary["attempts"] == 4
  assert sum(summary[f"{name}_s"] for name in CATEGORIES) == pytest.approx(summary["wall_s"])
  assert all(summary[f"{name}_s"] >= 0 for name in CATEGORIES)
  assert summary["restart_s"] > 0 and summary["startup_s"] > 0
  assert summary["other_s"] < 0.2 * summary["wall_s"]
  # From the first process start to the last record: inside the launcher's lifetime.
  assert wall - 10 < summary["wall_s"] <= wall
