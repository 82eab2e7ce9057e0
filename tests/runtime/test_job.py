"""The start of every launcher (llama3_jax/runtime/job.py), in one process: who writes, the
barrier, and an environment that contradicts itself refused in one line before any work."""

import pytest

from llama3_jax.errors import UserError
from llama3_jax.runtime import job


def test_one_process_is_the_primary_and_writes_once(tmp_path):
  assert job.is_primary()
  job.barrier("nothing to wait for")   # one process: returns at once
  path = tmp_path / "out.txt"
  assert job.write_once("out", lambda: path.write_text("x")) == 1 and path.read_text() == "x"


@pytest.mark.parametrize("environ, message", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "5"}, "JAX_PROCESS_ID=5 with JAX_NUM_PROCESSES=2"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, "JAX_NUM_PROCESSES, JAX_PROCESS_ID not"),
    ({"JAX_COORDINATOR_ADDRESS": "nohost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "is not host:port"),
])
def test_a_contradictory_job_environment_is_one_line(monkeypatch, environ, message):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(UserError, match=message) as error:
    job.start(cpu_devices=None)
  assert "launch.local" in str(error.value) and "\n" not in str(error.value)


def test_two_processes_one_writer_and_its_error_ends_the_job(tmp_path):
  """Process 0 writes, process 1 reads what it wrote; when process 0 fails writing, both stop
  with its error (exit 2) at once instead of process 1 waiting at a barrier."""
  import os
  import pathlib
  import subprocess
  import sys
  import time
  root = pathlib.Path(__file__).resolve().parents[2]
  start = time.time()
  done = subprocess.run([sys.executable, "-m", "launch.local", "--processes", "2",
                         "--devices-per-process", "1", "--max-restarts", "0", "--",
                         sys.executable, "-m", "tests.runtime.write_once_job", str(tmp_path)],
                        cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                        capture_output=True, text=True, timeout=120)
  output = done.stdout + done.stderr
  assert done.returncode == 2, output[-3000:]
  assert (tmp_path / "written.txt").read_text() == "once\n"
  assert "[p1] read: once" in output and "[p0] read: once" in output
  assert f"[p0] error: {tmp_path / 'bad.txt'} cannot be written" in output
  assert "Traceback" not in output and time.time() - start < 60
