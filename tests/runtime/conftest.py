"""Shared by the runtime tests that start jobs as subprocesses."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def job_env(tmp_path_factory):
  """The environment of a launched job: this checkout on the path, the embedded corpus built
  (LLAMA3_JAX_CACHE, set by tests/conftest.py), and one JAX compilation cache for the session,
  so that restarts load their compiled step as they would on a cluster with a shared cache
  (launch/gpu_env.sh)."""
  from llama3_jax.data.corpus import embedded_corpus
  embedded_corpus()   # built once here, not by several processes of a job at the same time
  cache = tmp_path_factory.mktemp("jax_cache")
  return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
