"""Print where every parameter of a Llama 3 model lives on a mesh, and bytes per device.

    python -m experiments.inspect_sharding --size llama3-405b --mesh tensor=8,stage=16,fsdp=128
    python -m experiments.inspect_sharding --size llama3-8b --mesh fsdp=8 --fsdp-mode llama3

Nothing is allocated and no devices are created: the model is abstract (`jax.eval_shape`) and
so is the mesh, so any cluster layout can be planned on a laptop. The optimizer is AdamW
(two fp32 moments per parameter). A layout the pre-training launcher would refuse (heads,
FFN, vocabulary or d_model not splitting over it) is one line, exit 2.
"""

import math

import optax

from llama3_jax import cli
from llama3_jax.errors import UserError
from llama3_jax.model import SIZES
from llama3_jax.sharding import (AXES, MeshConfig, ShardingConfig, abstract_mesh, make_rules,
                                 parse_mesh, validate)
from llama3_jax.sharding.inspect import sharding_report
from llama3_jax.train.setup import abstract_train_state


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
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
  model_config = SIZES[args.size]
  # The pre-training launcher's own check (a table of a layout it refuses would mislead).
  try:
    sizes = validate(mesh_config, model_config, n_devices=n_devices)
  except ValueError as error:
    raise UserError(f"python -m experiments.pretrain would refuse this layout: {error}",
                    "change --mesh (or --size)") from None
  if model_config.n_layers % sizes["stage"]:
    split = model_config.d_model % (sizes["fsdp"] * sizes["stage"]) == 0
    print(f"note: {model_config.n_layers} layers over stage={sizes['stage']} is uneven: the "
          "layer stack is " + ("split over stage along d_model" if split else
                               "replicated over stage (d_model does not divide fsdp x stage)")
          + " (llama3_jax/sharding/rules.py); each step gathers every stage's layers "
          "(llama3_jax/parallel/pipeline.py).")
  sharding = ShardingConfig(args.fsdp_mode, args.sequence_parallel)
  rules = make_rules(model_config, sizes, sharding)
  _, state, _ = abstract_train_state(model_config, optax.adamw(1e-4))
  report = sharding_report(state, abstract_mesh(sizes), rules, fsdp_mode=args.fsdp_mode)
  print(f"{args.size}\n{report}")


if __name__ == "__main__":
  cli.run(main)
