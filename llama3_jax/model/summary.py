"""A parameter table (name, shape, logical axes, dtype, count) for logs and notebooks."""

import jax
import numpy as np
from flax import nnx


def parameter_table(model: nnx.Module) -> str:
  """One row per parameter plus the total; works on real and on `nnx.eval_shape` models."""
  variables = jax.tree_util.tree_leaves_with_path(
      nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
  rows = [("parameter", "shape", "logical axes", "dtype", "count")]
  total = 0
  for path, var in variables:
    count = int(np.prod(var.shape))
    total += count
    name = ".".join(str(getattr(k, "key", k)) for k in path)
    axes = ", ".join(str(a) for a in var.get_metadata().get("out_sharding", ()))
    rows.append((name, str(tuple(var.shape)), axes, str(var.dtype), f"{count:,}"))
  rows.append(("total", "", "", "", f"{total:,}"))
  widths = [max(len(r[i]) for r in rows) for i in range(5)]
  lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(row, widths))) for row in rows]
  lines.insert(1, "-" * len(lines[0]))
  lines.insert(-1, "-" * len(lines[0]))
  return "\n".join(lines)
