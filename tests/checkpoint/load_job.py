"""One process of a multi-process job that loads a model sharded and saves it back
(tests/checkpoint/test_multiprocess_load.py runs it under `launch.local`).

    python -m launch.local --processes 2 --devices 8 -- \
        python tests/checkpoint/load_job.py HF_DIR RUN OTHER_RUN OUT

Loads HF_DIR and RUN onto an fsdp=4 x tensor=2 mesh of all the job's devices, checks that
each array has its target's sharding and that this process holds only its shards, then
writes the values (OUT/{hf,run}.npz, gathered, process 0), the bytes each process read
(OUT/read_<process>.json), a Hugging Face export of the sharded model (OUT/export) and the
average of RUN and OTHER_RUN (OUT/average).
"""

import json
import pathlib
import sys

import pytest

from llama3_jax.runtime import distributed


def main(hf_dir, run, other_run, out):
  distributed.initialize()
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from llama3_jax import hf
  from llama3_jax.checkpoint.model import load_model, load_params, model_config_of
  from llama3_jax.checkpoint.averaging import average_checkpoints, checkpoint_step_dir
  from llama3_jax.checkpoint.target import model_target
  from llama3_jax.sharding import MeshConfig, make_mesh
  from tests.checkpoint.test_sharded_load import Reads, local_shard_bytes

  out = pathlib.Path(out)
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  config = model_config_of(checkpoint_step_dir(run))
  _, target = model_target(config, "lm", mesh)
  reads = Reads(pytest.MonkeyPatch())
  for name, source in (("hf", hf_dir), ("run", run)):
    params = load_params(source, target)
    if name == "hf":   # this process read its own shards, each once, and nothing else
      (out / f"read_{jax.process_index()}.json").write_text(json.dumps(
          {"read": sum(reads.sizes), "shards": local_shard_bytes(target),
           "model": sum(t.size * t.dtype.itemsize for t in jax.tree.leaves(target))}))
    for x, t in zip(jax.tree.leaves(params), jax.tree.leaves(target), strict=True):
      assert x.sharding == t.sharding, (x.sharding, t.sharding)
      assert len(x.addressable_shards) == 4 and not x.is_fully_addressable
    values = [multihost_utils.process_allgather(x, tiled=True) for x in jax.tree.leaves(params)]
    if jax.process_index() == 0:
      np.savez(out / f"{name}.npz", *values)
  _, model = load_model(run, mesh=mesh)
  hf.save(model, config, out / "export", max_shard_bytes=20_000)
  assert (out / "export" / "config.json").exists()   # every process returns once it is written
  average_checkpoints([run, other_run], out / "average")
  assert (out / "average" / "meta").exists()
  print(f"process {jax.process_index()}: loaded and exported")


if __name__ == "__main__":
  main(*sys.argv[1:])
