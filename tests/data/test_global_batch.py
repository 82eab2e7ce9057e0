"""The global batch of a step is the same for every mesh layout and JAX process count."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from llama3_jax.data.corpus import embedded_corpus

pytestmark = pytest.mark.slow   # subprocess jobs: outside the fast core

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(__file__).with_name("global_batch_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(processes: int, mesh: dict, out: pathlib.Path) -> dict:
  port, data = free_port(), str(embedded_corpus())
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(processes), str(port),
                             data, str(out), json.dumps(mesh)], cwd=ROOT,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(processes)]
  for p in procs:
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output[-3000:]
  return dict(np.load(out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return run(1, {"fsdp": 8}, tmp_path_factory.mktemp("ref") / "batches.npz")


@pytest.mark.parametrize("processes, mesh", [
    (1, {"data": 2, "fsdp": 4}),
    (2, {"fsdp": 8}),
    (2, {"data": 2, "fsdp": 2, "tensor": 2}),
])
def test_global_batches_are_identical(reference, processes, mesh, tmp_path):
  got = run(processes, mesh, tmp_path / "batches.npz")
  assert got.keys() == reference.keys()
  for key in reference:
    np.testing.assert_array_equal(got[key], reference[key], err_msg=key)
  assert {reference[k].shape for k in reference if k.startswith("3/")} == {(32, 64)}
