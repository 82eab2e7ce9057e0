"""What the compiled train step does, by dtype: matmuls, converts, collectives, XLA's cost.

    python -m benchmarks.step_hlo                      # our step, fp32 and bf16, peers' config
    python -m benchmarks.step_hlo --hlo DUMP.txt       # any optimized HLO text (e.g. MaxText's,
                                                       # from XLA_FLAGS=--xla_dump_to=DIR)

For the peers' tiny config (benchmarks/peers.py) on 8 fake CPU devices: per dtype, XLA's cost
analysis (FLOPs and bytes accessed per device), the matmuls (`dot`) by operand and result
dtype with the FLOPs of each kind, the bytes written by standalone `convert`s, and the
collectives' traffic. Robust where timings are not: on a shared machine the step time swings,
the compiled program does not. It is how the bf16 step's fp32 head backward was found
(BENCHMARKS.md, "Side by side with MaxText").
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import collections  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen  # noqa: E402

from llama3_jax.data.synthetic import synthetic_batch  # noqa: E402
from llama3_jax.model import ModelConfig  # noqa: E402
from llama3_jax.sharding import MeshConfig, ShardingConfig  # noqa: E402
from llama3_jax.sharding.hlo import collectives  # noqa: E402
from llama3_jax.train.setup import setup  # noqa: E402

MODEL = ModelConfig(vocab_size=32000, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
                    head_dim=64, ffn_dim=512)
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4}
_DEF = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (\w+)\[([\d,]*)\]")


def compiled_step(dtype: str):
  model = MODEL.replace(dtype=dtype)
  s = setup(model, MeshConfig(fsdp=8), sharding=ShardingConfig(vocab_over_fsdp=True),
            global_batch=8, seq_len=256)
  batch = {name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s.fns.batch_sharding)
           for name, x in synthetic_batch(0, 0, 8, 256, model.vocab_size).items()}
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    return s.fns.train.jitted.lower(s.abstract_state, batch, np.float32(0)).compile()


def profile(text: str) -> dict:
  """Matmuls by (lhs, rhs -> out) dtype with their FLOPs, convert bytes, collective bytes."""
  shapes, dots, converts = {}, collections.Counter(), 0
  for line in text.splitlines():
    m = _DEF.match(line)
    if m:
      shapes[m.group(1)] = (m.group(2), [int(d) for d in m.group(3).split(",") if d])
    d = re.search(r"= (\w+)\[([\d,]*)\]\S* dot\((%[\w.\-]+), (%[\w.\-]+)\)(.*)", line)
    if d and d.group(3) in shapes and d.group(4) in shapes:
      (lhs, lhs_dims), (rhs, _) = shapes[d.group(3)], shapes[d.group(4)]
      contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", d.group(5))
      k = np.prod([lhs_dims[int(i)] for i in contracting.group(1).split(",") if i]) \
          if contracting else 1
      out = np.prod([int(x) for x in d.group(2).split(",") if x])
      dots[f"{lhs} x {rhs} -> {d.group(1)}"] += 2 * int(out) * int(k)
    c = re.search(r"= (\w+)\[([\d,]*)\]\S* convert\(", line)
    if c:
      converts += _BYTES.get(c.group(1), 4) * int(np.prod(
          [int(x) for x in c.group(2).split(",") if x]))
  traffic = collections.Counter()
  for op in collectives(text):
    traffic[op.op] += op.bytes
  return {"dots": dots, "convert_bytes": converts, "collective_bytes": traffic}


def show(name: str, text: str, cost: dict | None = None):
  p = profile(text)
  print(f"\n## {name}")
  if cost:
    print(f"XLA cost analysis per device: {cost.get('flops', 0) / 1e9:.2f} GFLOP, "
          f"{cost.get('bytes accessed', 0) / 1e6:.0f} MB accessed")
  print("| matmul dtypes (lhs x rhs -> out) | GFLOP per device (loop bodies once) |")
  print("|---|---|")
  for kind, flops in sorted(p["dots"].items(), key=lambda kv: -kv[1]):
    print(f"| {kind} | {flops / 1e9:.3f} |")
  print(f"standalone converts write {p['convert_bytes'] / 1e6:.1f} MB; collectives: " + ", ".join(
      f"{op} {b / 1e6:.1f} MB" for op, b in sorted(p["collective_bytes"].items())))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hlo", nargs="*", default=[], help="optimized HLO text files")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}")
  for path in args.hlo:
    show(path, open(path).read())
  if args.hlo:
    return
  for dtype in args.dtypes.split(","):
    compiled = compiled_step(dtype)
    cost = compiled.cost_analysis()
    show(f"llama3_jax train step, {dtype}", compiled.as_text(),
         cost[0] if isinstance(cost, list) else cost)


if __name__ == "__main__":
  main()
