"""Print where every parameter of a Llama 3 model lives on a mesh, and bytes per device.

    python -m experiments.inspect_sharding --size llama3-405b --mesh tensor=8,stage=16,fsdp=128
    python -m experiments.inspect_sharding --size llama3-8b --mesh fsdp=8 --fsdp-mode llama3

Nothing is allocated and no devices are created: the model is abstract (`jax.eval_shape`) and
so is the mesh, so any cluster layout can be planned on a laptop. The optimizer is AdamW
(two fp32 moments per parameter).
"""

import argparse
import math

import optax

from llama3_jax.model import SIZES
from llama3_jax.sharding import AXES, MeshConfig, ShardingConfig, abstract_mesh, make_rules
from llama3_jax.sharding.inspect import sharding_report
from llama3_jax.train.setup import abstract_train_state


def parse_mesh(text: str) -> dict[str, int]:
  sizes = {}
  for item in filter(None, text.split(",")):
    axis, _, value = item.partition("=")
    if axis not in AXES or not value.lstrip("-").isdigit():
      raise SystemExit(f"--mesh: bad entry {item!r}; write axis=size with axes from {AXES}, "
                       "e.g. tensor=8,stage=16,fsdp=128")
    sizes[axis] = int(value)
  return sizes


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="llama3-8b", choices=sorted(SIZES))
  parser.add_argument("--mesh", default="fsdp=8", help="axis=size,... (unnamed axes: 1)")
  parser.add_argument("--devices", type=int, default=None,
                      help="device count, needed only when one axis is -1")
  parser.add_argument("--fsdp-mode", default="zero3", choices=["zero3", "llama3"])
  parser.add_argument("--sequence-parallel", action="store_true")
  args = parser.parse_args(argv)

  given = parse_mesh(args.mesh)
  mesh_config = MeshConfig(**{a: given.get(a, 1) for a in AXES})
  n_devices = args.devices or math.prod(s for s in given.values() if s > 0)
  try:
    sizes = mesh_config.sizes(n_devices)
  except ValueError as e:
    raise SystemExit(str(e))
  model_config = SIZES[args.size]
  if model_config.n_layers % sizes["stage"]:
    print(f"note: {model_config.n_layers} layers over stage={sizes['stage']} is uneven; bytes "
          "below are for the stage with the most layers.")
  sharding = ShardingConfig(args.fsdp_mode, args.sequence_parallel)
  rules = make_rules(model_config, sizes, sharding)
  _, state, _ = abstract_train_state(model_config, optax.adamw(1e-4))
  report = sharding_report(state, abstract_mesh(sizes), rules, fsdp_mode=args.fsdp_mode)
  print(f"{args.size}\n{report}")


if __name__ == "__main__":
  main()
