"""2 processes x 4 devices load a model as 1 process does, from a training workdir and from a
Hugging Face directory (each process reading its shards), and export it and average two
checkpoints byte for byte (values for the average) alike."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from llama3_jax import hf
from llama3_jax.checkpoint.averaging import average_checkpoints, restore_params
from llama3_jax.model import Transformer
from tests.checkpoint.test_sharded_load import CONFIG, save_step
from tests.runtime.conftest import ROOT

pytestmark = pytest.mark.slow   # a subprocess job


def test_two_processes_load_and_export_as_one(job_env, tmp_path):
  model = Transformer(CONFIG, rngs=nnx.Rngs(3))
  hf.save(model, CONFIG, tmp_path / "hf", max_shard_bytes=20_000)
  save_step(tmp_path / "run" / "checkpoints" / "7", model)
  save_step(tmp_path / "other" / "checkpoints" / "3", Transformer(CONFIG, rngs=nnx.Rngs(4)))
  (tmp_path / "out").mkdir()
  command = [sys.executable, "-m", "launch.local", "--processes", "2", "--devices", "8",
             "--max-restarts", "0", "--", sys.executable, "tests/checkpoint/load_job.py",
             str(tmp_path / "hf"), str(tmp_path / "run"), str(tmp_path / "other"),
             str(tmp_path / "out")]
  result = subprocess.run(command, cwd=ROOT, env=job_env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  for process in (0, 1):   # each process read its shards (half the model), each once
    read = json.loads((tmp_path / "out" / f"read_{process}.json").read_text())
    assert read["read"] == read["shards"] <= 0.5 * read["model"], read
  reference = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]
  for name in ("hf", "run"):
    loaded = np.load(tmp_path / "out" / f"{name}.npz")
    assert len(loaded.files) == len(reference)
    for i, expected in enumerate(reference):
      np.testing.assert_array_equal(loaded[f"arr_{i}"], expected)
  # The export from the model sharded over two processes is the one-process export.
  hf.save(model, CONFIG, tmp_path / "one", max_shard_bytes=20_000)
  files = sorted(p.name for p in (tmp_path / "one").iterdir())
  assert sorted(p.name for p in (tmp_path / "out" / "export").iterdir()) == files
  for file in files:
    assert (tmp_path / "out" / "export" / file).read_bytes() == (tmp_path / "one" / file).read_bytes()
  average_checkpoints([tmp_path / "run", tmp_path / "other"], tmp_path / "average")
  for a, b in zip(jax.tree.leaves(restore_params(tmp_path / "average")),
                  jax.tree.leaves(restore_params(tmp_path / "out" / "average")), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (json.loads((tmp_path / "out" / "average" / "meta" / "metadata").read_text())
          == json.loads((tmp_path / "average" / "meta" / "metadata").read_text()))
