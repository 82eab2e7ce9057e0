"""FSDP modes compared: ZeRO-3 (re-gather weights in backward) vs Llama 3 (keep them).

    python -m benchmarks.fsdp_modes            # 8 fake CPU devices, fsdp=8

Prints, per mode, the compiled step's per-device memory (XLA memory analysis), the bytes each
device receives through all-gathers and sends through gradient reductions in one step (collectives
inside the layer loop counted once per layer), and the measured step time on this machine.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen  # noqa: E402

from llama3_jax.model import ModelConfig  # noqa: E402
from llama3_jax.sharding import MeshConfig, ShardingConfig  # noqa: E402
from llama3_jax.sharding.hlo import traffic  # noqa: E402
from llama3_jax.train.setup import setup  # noqa: E402

MODEL = ModelConfig(vocab_size=4096, d_model=256, n_layers=8, n_heads=8, n_kv_heads=4,
                    head_dim=32, ffn_dim=704)
BATCH, SEQ = 16, 256


def measure(fsdp_mode: str) -> dict:
  s = setup(MODEL, MeshConfig(fsdp=8), sharding=ShardingConfig(fsdp_mode=fsdp_mode))
  state, fns, mesh, rules = s.init_state(), s.fns, s.mesh, s.rules
  tokens = np.random.RandomState(0).randint(0, MODEL.vocab_size, (BATCH, SEQ + 1))
  batch = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                         fns.batch_sharding)
  with jax.set_mesh(mesh), linen.logical_axis_rules(rules):
    compiled = fns.train.jitted.lower(state, batch, 1e-3).compile()
  per_op = traffic(compiled.as_text(), MODEL.n_layers)
  ops = ("all-gather", "reduce-scatter", "all-reduce")
  counts = {op: per_op.get(op, (0, 0))[0] for op in ops}
  moved = {op: per_op.get(op, (0, 0))[1] for op in ops}
  memory = compiled.memory_analysis()
  for _ in range(2):   # warm up
    state, metrics = fns.train(state, batch, 1e-3)
  jax.block_until_ready(state)
  start = time.perf_counter()
  steps = 5
  for _ in range(steps):
    state, metrics = fns.train(state, batch, 1e-3)
  jax.block_until_ready(state)
  return {"temp": memory.temp_size_in_bytes, "args": memory.argument_size_in_bytes,
          "traffic": moved, "counts": counts,
          "step_s": (time.perf_counter() - start) / steps}


def main():
  mib = lambda b: f"{b / 2**20:8.2f}"
  results = {mode: measure(mode) for mode in ("zero3", "llama3")}
  print(f"model d={MODEL.d_model} L={MODEL.n_layers} F={MODEL.ffn_dim} V={MODEL.vocab_size} "
        f"(fp32 params), batch {BATCH}x{SEQ}, fsdp=8, "
        f"{jax.devices()[0].platform}")
  print(f"{'mode':8} {'state MiB':>10} {'temp MiB':>10} {'gathers':>8} {'gathered MiB':>13} "
        f"{'reduced MiB':>12} {'step s':>8}")
  for mode, r in results.items():
    reduced = r["traffic"]["reduce-scatter"] + r["traffic"]["all-reduce"]
    print(f"{mode:8} {mib(r['args']):>10} {mib(r['temp']):>10} {r['counts']['all-gather']:>8} "
          f"{mib(r['traffic']['all-gather']):>13} {mib(reduced):>12} {r['step_s']:8.3f}")
  z, l = results["zero3"], results["llama3"]
  print(f"llama3 / zero3: temp memory x{l['temp'] / z['temp']:.2f}, all-gathered bytes "
        f"x{l['traffic']['all-gather'] / z['traffic']['all-gather']:.2f}, step time "
        f"x{l['step_s'] / z['step_s']:.2f}")


if __name__ == "__main__":
  main()
