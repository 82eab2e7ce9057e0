"""Collectives in compiled HLO text, with their device groups, for tests and benchmarks.

    for op, groups, shape in collectives(jitted.lower(*args).compile().as_text()): ...

XLA prints replica groups in three notations; all are turned into a sorted tuple of device-id
tuples: explicit `{{0,1},{2,3}}`, iota `[2,4]<=[4,2]T(1,0)`, and mesh
`mesh['axis_0'=2,'axis_1'=4] {'axis_0'}` (a collective over the named axes of an iota mesh).
"""

import re
from typing import NamedTuple

import numpy as np

_OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_LINE = re.compile(r"= (?P<shape>\([^)]*\)|\S+) (?P<op>" + "|".join(_OPS) + r")(?:-start)?\(")


def _groups(line: str):
  explicit = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", line)
  if explicit:
    return [tuple(int(i) for i in g.split(",") if i)
            for g in re.findall(r"\{([\d,]*)\}", explicit.group(1))]
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
  if iota:
    shape, dims = [int(i) for i in iota.group(1).split(",")], [
        int(i) for i in iota.group(2).split(",")]
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    if iota.group(3):
      ids = ids.transpose([int(i) for i in iota.group(3).split(",")])
    return [tuple(g) for g in ids.reshape(shape).tolist()]
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if mesh:
    axes = re.findall(r"'(\w+)'=(\d+)", mesh.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    over = re.findall(r"'(\w+)'", mesh.group(2))
    ids = np.arange(int(np.prod(sizes))).reshape(sizes)
    order = [i for i, n in enumerate(names) if n not in over] + [names.index(n) for n in over]
    size = int(np.prod([sizes[names.index(n)] for n in over]))
    return [tuple(g) for g in ids.transpose(order).reshape(-1, size).tolist()]
  return None


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?(?P<name>[\w.\-]+) .*\{$")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f32": 4, "s32": 4,
                "u32": 4, "f64": 8, "s64": 8, "u64": 8}


class Collective(NamedTuple):
  """One collective instruction: its op, device groups, result shape and computation."""
  op: str
  groups: tuple[tuple[int, ...], ...] | None
  shape: str
  computation: str

  @property
  def bytes(self) -> int:
    """Bytes of the result (tuples of results summed)."""
    return sum(_DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
               for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", self.shape))


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective instruction in the HLO text, with its device groups."""
  out, computation = [], ""
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group("name")
    match = _LINE.search(line)
    if match:
      groups = _groups(line)
      out.append(Collective(
          match.group("op"),
          None if groups is None else tuple(sorted(tuple(sorted(g)) for g in groups)),
          match.group("shape"), computation))
  return out


def loop_bodies(hlo_text: str) -> set[str]:
  """Names of the computations that are bodies of while loops (e.g. the scan over layers)."""
  return set(re.findall(r"body=%?([\w.\-]+)", hlo_text))


def axis_groups(mesh, axis: str):
  """Device-id groups of a collective over one mesh axis, in the format of `collectives`."""
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  i = mesh.axis_names.index(axis)
  groups = np.moveaxis(ids, i, -1).reshape(-1, ids.shape[i])
  return tuple(sorted(tuple(sorted(g)) for g in groups.tolist()))


def traffic(hlo_text: str, loop_trips: int, groups=None) -> dict[str, tuple[int, int]]:
  """{op: (executions, result bytes)} per step; ops inside while bodies run `loop_trips` times.

  Exact for programs whose only loop is the scan over layers (reference attention); with
  `groups`, only collectives over those device groups count.
  """
  bodies = loop_bodies(hlo_text)
  out = {}
  for c in collectives(hlo_text):
    if groups is not None and c.groups != groups:
      continue
    repeats = loop_trips if c.computation in bodies else 1
    count, size = out.get(c.op, (0, 0))
    out[c.op] = (count + repeats, size + c.bytes * repeats)
  return out
