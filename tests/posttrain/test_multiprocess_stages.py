"""Post-training as multi-process jobs: SFT, DPO (its frozen reference in the step, started from
a Hugging Face directory) and a reward model on 2 processes x 4 devices train as on 1 process x
8 devices (losses and gradient norms of every step, the exported weights: 1e-5 relative), and
`experiments.sft` under launch.local survives a SIGKILL of one process while a checkpoint is
written: the launcher restarts the job and the resumed run equals the uninterrupted one bit for
bit."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from llama3_jax.posttrain import task
from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from llama3_jax.train.metrics import read_metrics
from tests.helpers import tiny_run_config
from tests.posttrain import stages_job

pytestmark = pytest.mark.slow   # subprocess jobs
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
  """A 2-step pre-training run of a tiny model and the shipped task's files, small."""
  root = tmp_path_factory.mktemp("mp_posttrain")
  cfg = tiny_run_config(steps=2)
  cfg.model.max_seq_len = 256
  train(run_config(cfg), root / "pretrain")
  task.write_task(root / "task", train_questions=96, heldout=8)
  return root


def job(command, tmp_path_factory, max_restarts: int = 0):
  # One compilation cache for the module: a restarted job loads its programs, as on a cluster.
  env = {**os.environ, "PYTHONPATH": str(ROOT),
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  done = subprocess.run([sys.executable, "-m", "launch.local", "--processes", "2",
                         "--devices-per-process", "4", "--max-restarts", str(max_restarts),
                         "--restart-delay-s", "0", "--", sys.executable, "-m", *command],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  return done.stdout + done.stderr


@pytest.fixture(scope="module")
def one_process(start):
  out = start / "one_process"
  stages_job.run_stages(start, out)   # this process: 8 devices
  return out


@pytest.fixture(scope="module")
def two_processes(start, tmp_path_factory):
  out = start / "two_processes"
  job(["tests.posttrain.stages_job", start, out], tmp_path_factory)
  return out


def rows(workdir):
  return np.array([(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(workdir)])


def weights(workdir):
  return load_file(str(workdir / "hf" / "model.safetensors"))


@pytest.mark.parametrize("kind", ["sft", "dpo", "reward"])
def test_two_processes_post_train_like_one(one_process, two_processes, kind):
  one, two = rows(one_process / kind), rows(two_processes / kind)
  assert list(one[:, 0]) == list(two[:, 0]) == [1, 2, 3, 4]
  np.testing.assert_allclose(two[:, 1:], one[:, 1:], rtol=1e-5, atol=0)
  assert one[-1, 1] != one[0, 1]   # it trained
  a, b = weights(one_process / kind), weights(two_processes / kind)
  assert a.keys() == b.keys() and (kind != "reward" or "score.weight" in a)
  for name in a:
    np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_sigkill_during_sft_resumes_bit_for_bit(start, two_processes, tmp_path,
                                                tmp_path_factory):
  workdir = tmp_path / "sft"
  output = job(["experiments.sft", "--config", "tests/posttrain/stage_config.py:sft",
                f"--config.init.path={start / 'pretrain'}",
                f"--config.data.path={start / 'task' / 'sft.jsonl'}", f"--workdir={workdir}",
                "--config.faults.kill=2:during:p1:a0"], tmp_path_factory, max_restarts=1)
  assert "killed by SIGKILL; stopping the others" in output
  # Checkpoint 2 was being written when process 1 died: the job went on from checkpoint 1.
  assert "resumed from step 1 " in (workdir / "logs" / "process_0.log").read_text()
  np.testing.assert_array_equal(rows(workdir), rows(two_processes / "sft"))
  a, b = weights(workdir), weights(two_processes / "sft")
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
