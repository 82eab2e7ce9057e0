"""Device mesh, logical sharding rules and sharding inspection."""

from llama3_jax.sharding.mesh import (AXES, MeshConfig, abstract_mesh, make_mesh, parse_mesh,
                                      validate)
from llama3_jax.sharding.rules import (ShardingConfig, batch_spec, logical_to_spec, make_rules,
                                       state_shardings, state_specs, without_axis)

__all__ = ["AXES", "MeshConfig", "ShardingConfig", "abstract_mesh", "batch_spec",
           "logical_to_spec", "make_mesh", "make_rules", "parse_mesh", "state_shardings", "state_specs",
           "validate", "without_axis"]
