"""Where every array of a training state lives, and how many bytes each device holds.

    report = sharding_report(abstract_state, abstract_mesh({"tensor": 8, "stage": 16,
                                                             "fsdp": 128}), rules)
    print(report)      # text, for logs
    report             # in a notebook: an HTML table (_repr_html_)

Works on abstract states (`nnx.eval_shape`) and abstract meshes, so the 405B model on Llama 3's
16K-GPU layout can be planned on a laptop. Bytes per device are exact for even splits and round
up (the largest shard) for uneven ones.
"""

import dataclasses
import html
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from llama3_jax.sharding.rules import Rules, logical_to_spec, without_axis


@dataclasses.dataclass(frozen=True)
class Row:
  path: str
  shape: tuple[int, ...]
  dtype: str
  logical: tuple[str | None, ...]
  spec: PartitionSpec
  bytes_per_device: int
  kind: str            # "parameter" or "optimizer"


def shard_shape(shape, spec: PartitionSpec, mesh_sizes: dict[str, int]) -> tuple[int, ...]:
  """Shape of the largest shard of an array of `shape` laid out by `spec`."""
  out = []
  for i, dim in enumerate(shape):
    entry = spec[i] if i < len(spec) else None
    axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    out.append(math.ceil(dim / math.prod(mesh_sizes[a] for a in axes)))
  return tuple(out)


def bytes_per_device(shape, dtype, spec: PartitionSpec, mesh_sizes: dict[str, int]) -> int:
  return int(np.prod(shard_shape(shape, spec, mesh_sizes))) * np.dtype(dtype).itemsize


@dataclasses.dataclass(repr=False)
class ShardingReport:
  rows: list[Row]
  mesh_sizes: dict[str, int]
  fsdp_mode: str

  def totals(self) -> dict[str, int]:
    """Bytes per device: parameters, gradients, optimizer state (and gathered weights)."""
    params = sum(r.bytes_per_device for r in self.rows if r.kind == "parameter")
    totals = {"parameters": params, "gradients": params,
              "optimizer state": sum(r.bytes_per_device for r in self.rows
                                     if r.kind == "optimizer")}
    if self.fsdp_mode == "llama3":
      # Weights gathered over `fsdp` in forward and kept for backward: all alive at the peak.
      totals["gathered weights (llama3 FSDP)"] = sum(
          bytes_per_device(r.shape, r.dtype, without_axis(r.spec, "fsdp"), self.mesh_sizes)
          for r in self.rows if r.kind == "parameter")
    totals["total"] = sum(totals.values())
    return totals

  def _table(self, kinds=("parameter",)):
    header = ("array", "shape", "dtype", "logical axes", "mesh axes", "per device")
    body = [(r.path, "x".join(map(str, r.shape)) or "scalar", r.dtype,
             ", ".join(str(a) for a in r.logical), _spec_str(r.spec), _human(r.bytes_per_device))
            for r in self.rows if r.kind in kinds]
    return header, body

  def __str__(self):
    header, body = self._table()
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) if i == 5 else c.ljust(w)
                                for i, (c, w) in enumerate(zip(row, widths)))
    mesh = " x ".join(f"{a}={s}" for a, s in self.mesh_sizes.items() if s > 1) or "1 device"
    lines = [f"mesh: {mesh} ({math.prod(self.mesh_sizes.values())} devices), "
             f"fsdp_mode={self.fsdp_mode}", fmt(header), "-" * len(fmt(header))]
    lines += [fmt(row) for row in body]
    lines += ["", "per device:"]
    lines += [f"  {name:<32}{_human(value):>12}" for name, value in self.totals().items()]
    return "\n".join(lines)

  __repr__ = __str__

  def _repr_html_(self):
    header, body = self._table()
    cell = lambda tag, c: f"<{tag}>{html.escape(c)}</{tag}>"
    rows = ["<tr>" + "".join(cell("th", c) for c in header) + "</tr>"]
    rows += ["<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in body]
    totals = "".join(f"<tr><td>{html.escape(k)}</td><td>{_human(v)}</td></tr>"
                     for k, v in self.totals().items())
    return (f"<p>mesh {html.escape(str(self.mesh_sizes))}, fsdp_mode={self.fsdp_mode}</p>"
            f"<table>{''.join(rows)}</table><p>per device</p><table>{totals}</table>")


def sharding_report(state, mesh, rules: Rules, *, fsdp_mode: str = "zero3") -> ShardingReport:
  """Report for an nnx State: a TrainState's (model + optimizer) or a bare model's."""
  mesh_sizes = dict(mesh.shape)
  logical = nnx.get_partition_spec(state)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  rows = []
  for (path, names), leaf in zip(jax.tree_util.tree_leaves_with_path(logical, is_leaf=is_spec),
                                 jax.tree.leaves(state), strict=True):
    keys = [_key_str(k) for k in path]
    keys = [k for k in keys if k != "value"]   # the Variable's own value field
    spec = logical_to_spec(tuple(names), rules)
    kind = "optimizer" if keys and keys[0] == "optimizer" else "parameter"
    rows.append(Row(".".join(keys), tuple(leaf.shape), str(leaf.dtype), tuple(names), spec,
                    bytes_per_device(leaf.shape, leaf.dtype, spec, mesh_sizes), kind))
  return ShardingReport(rows, mesh_sizes, fsdp_mode)


def _key_str(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _spec_str(spec: PartitionSpec) -> str:
  return ", ".join("-" if e is None else (e if isinstance(e, str) else "+".join(e))
                   for e in spec) or "replicated"


def _human(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024
