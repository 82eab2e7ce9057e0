"""Run by test_global_batch.py: one JAX process that assembles global batches and saves them.

python tests/data/global_batch_worker.py PROCESS_ID PROCESSES PORT DATA_DIR OUT MESH_JSON
"""

import json
import os
import sys

process_id, processes, port, data_dir, out, mesh_json = sys.argv[1:]
process_id, processes = int(process_id), int(processes)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8 // processes)
if processes > 1:
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes,
                             process_id=process_id)

from jax.experimental import multihost_utils  # noqa: E402

from llama3_jax.data.batches import Batches  # noqa: E402
from llama3_jax.data.loader import Loader  # noqa: E402
from llama3_jax.model import SIZES  # noqa: E402
from llama3_jax.optim.schedules import Stage  # noqa: E402
from llama3_jax.sharding import MeshConfig, make_mesh, make_rules  # noqa: E402
from llama3_jax.sharding.rules import batch_spec  # noqa: E402

mesh = make_mesh(MeshConfig(**json.loads(mesh_json)))
sharding = jax.sharding.NamedSharding(mesh, batch_spec(make_rules(SIZES["debug"],
                                                                  dict(mesh.shape))))
loader = Loader(data_dir, seed=0, streams=8, vocab_size=512)
batches = Batches(loader, sharding)
schedule = [(0, Stage(10, 16 * 32, 32))] * 2 + [(1, Stage(None, 32 * 64, 64))] * 2
saved = {}
for step, (index, stage) in enumerate(schedule):
  batches.set_stage(index, stage)
  for key, value in next(batches).items():
    saved[f"{step}/{key}"] = np.asarray(multihost_utils.process_allgather(value, tiled=True))
tokens = batches.log_fields()   # summed over processes
if process_id == 0:
  np.savez(out, tokens=np.array([tokens[f"data/{name}_tokens"] for name in loader.sources]),
           **saved)
