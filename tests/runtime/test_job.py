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
