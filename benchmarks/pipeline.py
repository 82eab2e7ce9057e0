"""Pipeline schedules compared: GPipe vs interleaved (V = 2), and where the head's time goes.

    python -m benchmarks.pipeline            # 8 fake CPU devices: stage=4 x fsdp=2

1. Per device: the compiled train step's memory (XLA memory analysis: arguments, temporaries),
   the bubble of the schedule, the padded share of its layer slots (0 when the layers divide
   the stages x repeats), and the measured step time, for GPipe and interleaved at the same
   model, batch and micro-batch count.
2. Per-stage balance: on one device, the time of one transformer layer (forward + backward) vs
   the embedding + final norm + head + loss, from loss-and-gradient steps of models with 8 and
   4 layers. It justifies computing the head outside the pipeline, split over every device.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import dataclasses  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen  # noqa: E402

from llama3_jax.model import ModelConfig  # noqa: E402
from llama3_jax.parallel.pipeline import Schedule  # noqa: E402
from llama3_jax.sharding import MeshConfig, ShardingConfig  # noqa: E402
from llama3_jax.train.setup import setup  # noqa: E402

MODEL = ModelConfig(vocab_size=4096, d_model=256, n_layers=8, n_heads=8, n_kv_heads=4,
                    head_dim=32, ffn_dim=704)
BATCH, SEQ, MICRO = 16, 256, 8


def batch_for(fns, model):
  tokens = np.random.RandomState(0).randint(0, model.vocab_size, (BATCH, SEQ + 1))
  return jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                        fns.batch_sharding)


def timed(fn, *args, steps=3):
  out = fn(*args)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def schedule_row(repeats):
  s = setup(MODEL, MeshConfig(stage=4, fsdp=2), sharding=ShardingConfig(pipeline_repeats=repeats),
            micro_batches=MICRO)
  state, fns = s.init_state(), s.fns
  batch = batch_for(fns, MODEL)
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    memory = fns.loss_and_grads.jitted.lower(state, batch).compile().memory_analysis()
  return {"args": memory.argument_size_in_bytes, "temp": memory.temp_size_in_bytes,
          "bubble": Schedule(4, repeats, MICRO).bubble,
          "waste": Schedule(4, repeats, MICRO, MODEL.n_layers).waste,
          "step_s": timed(fns.loss_and_grads, state, batch)}


def one_device_step_s(n_layers):
  model = dataclasses.replace(MODEL, n_layers=n_layers)
  s = setup(model, MeshConfig(fsdp=1), devices=jax.devices()[:1])
  return timed(s.fns.loss_and_grads, s.init_state(), batch_for(s.fns, model))


def main():
  mib = lambda b: f"{b / 2**20:.1f}"
  print(f"model d={MODEL.d_model} L={MODEL.n_layers} F={MODEL.ffn_dim} V={MODEL.vocab_size}, "
        f"batch {BATCH}x{SEQ}, {MICRO} micro-batches, mesh stage=4 x fsdp=2, "
        f"loss-and-gradients step")
  print("| schedule | bubble (idle/busy) | padded slots | arguments MiB/dev | temporaries MiB/dev "
        "| step s |")
  print("|---|---|---|---|---|---|")
  for name, repeats in (("GPipe (V=1)", 1), ("interleaved (V=2)", 2)):
    r = schedule_row(repeats)
    print(f"| {name} | {r['bubble']:.3f} | {r['waste']:.3f} | {mib(r['args'])} | "
          f"{mib(r['temp'])} | "
          f"{r['step_s']:.3f} |")
  t8, t4 = one_device_step_s(8), one_device_step_s(4)
  layer = (t8 - t4) / 4
  rest = t4 - 4 * layer
  print(f"\none device, batch {BATCH}x{SEQ}: one layer {layer * 1e3:.1f} ms, embedding + norm + "
        f"head + loss {rest * 1e3:.1f} ms ({rest / layer:.1f} layers)")


if __name__ == "__main__":
  main()
