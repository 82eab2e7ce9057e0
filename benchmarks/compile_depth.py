"""Compile time of the train step against depth: 2, 16 and 126 layers at a small width.

    python -m benchmarks.compile_depth           # 8 fake CPU devices, ~2-4 minutes

The stacked layers run under one `nnx.scan` (llama3_jax/model/transformer.py), so XLA compiles
one layer's body whatever the depth, and compile time should stay nearly flat (target: 126
layers within 1.3x of 2). Measured for the FSDP step (fsdp 8) and the pipeline step (stage 2 x
fsdp 4, 4 micro-batches; its scan runs over each stage's layers). Lowering (tracing to
StableHLO) and XLA's compile are timed apart, on abstract state (nothing allocated), with no
compilation cache; each is the best of `--repeats` (other jobs on the machine only slow it).
The unrolled Python loop (`scan_layers=False`) at 2 and 16 layers shows what the scan saves.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen  # noqa: E402

from llama3_jax.data.synthetic import synthetic_batch  # noqa: E402
from llama3_jax.model import ModelConfig  # noqa: E402
from llama3_jax.sharding import MeshConfig  # noqa: E402
from llama3_jax.train.setup import setup  # noqa: E402

WIDTH = dict(vocab_size=4096, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, ffn_dim=352)
BATCH, SEQ = 8, 128
LAYOUTS = {"fsdp 8": (MeshConfig(fsdp=8), 1), "pipeline stage 2 x fsdp 4": (
    MeshConfig(stage=2, fsdp=4), 4)}


def compile_times(n_layers: int, mesh: MeshConfig, micro_batches: int, scan: bool = True):
  """(lower_s, compile_s, compile CPU s) of the train step, on abstract state. The CPU time
  (all threads of this process) is the steadier figure where other jobs share the cores."""
  model = ModelConfig(n_layers=n_layers, scan_layers=scan, **WIDTH)
  s = setup(model, mesh, micro_batches=micro_batches, global_batch=BATCH, seq_len=SEQ)
  batch = {name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s.fns.batch_sharding)
           for name, x in synthetic_batch(0, 0, BATCH, SEQ, model.vocab_size).items()}
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    start = time.perf_counter()
    lowered = s.fns.train.jitted.lower(s.abstract_state, batch, np.float32(0))
    lowered_at, cpu = time.perf_counter(), time.process_time()
    lowered.compile()
  return lowered_at - start, time.perf_counter() - lowered_at, time.process_time() - cpu


def best(n_layers, mesh, micro_batches, repeats, scan=True):
  runs = [compile_times(n_layers, mesh, micro_batches, scan) for _ in range(repeats)]
  return tuple(min(r[i] for r in runs) for i in range(3))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", default="2,16,126")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--unrolled", default="2,16", help="depths for scan_layers=False")
  parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated names")
  args = parser.parse_args(argv)
  depths = [int(d) for d in args.depths.split(",")]
  jax.config.update("jax_enable_compilation_cache", False)
  print(f"width d_model {WIDTH['d_model']}, FFN {WIDTH['ffn_dim']}, vocab {WIDTH['vocab_size']};"
        f" batch {BATCH}x{SEQ}; best of {args.repeats}; jax {jax.__version__}")
  print("| layout | layers | lower s | compile s | total s | total / 2 layers | compile CPU s |"
        " CPU / 2 layers |")
  print("|---|---|---|---|---|---|---|---|")
  rows = []
  for name in args.layouts.split(","):
    mesh, micro = LAYOUTS[name]
    base = None
    for n in depths:
      times = best(n, mesh, micro, args.repeats)
      base = base or times
      rows.append((name, n, *times))
      show(name, n, times, base)
  base = None
  for n in [int(d) for d in args.unrolled.split(",") if d]:
    times = best(n, LAYOUTS["fsdp 8"][0], 1, args.repeats, scan=False)
    base = base or times
    show("fsdp 8, unrolled (scan_layers=False)", n, times, base)
  return rows


def show(name, n, times, base):
  lower_s, compile_s, cpu_s = times
  total, base_total = lower_s + compile_s, base[0] + base[1]
  print(f"| {name} | {n} | {lower_s:.2f} | {compile_s:.2f} | {total:.2f} | "
        f"{total / base_total:.2f}x | {cpu_s:.2f} | {cpu_s / base[2]:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
