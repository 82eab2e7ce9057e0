"""What a compiled train step really holds and moves, to check the planner against XLA.

    compiled = jitted.lower(abstract_state, abstract_batch, lr).compile()
    measured_memory(compiled)             # arguments + outputs + temporaries - donated, bytes
    payloads(compiled.as_text())          # {(op, group size): payload bytes per step}

Payloads are counted as the planner counts them (llama3_jax/planner/step_time.py): the bytes of
the whole tensor each collective gathers or reduces over its group (an all-gather's or an
all-reduce's result, a reduce-scatter's result times the group), a collective-permute's result;
an instruction inside while loops counts once per trip of every loop around it (XLA prints
`known_trip_count` on each while). Collectives of scalars (loss sums, norms) and over groups
of one device (they move nothing) are left out.
"""

import re

import numpy as np

from llama3_jax.sharding.hlo import collectives

_HEADER = re.compile(r"^(?:ENTRY )?%?(?P<name>[\w.\-]+) .*\{$")
_CALLS = re.compile(r"(body|condition|to_apply|calls)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def loop_multipliers(hlo_text: str) -> dict[str, int]:
  """How many times each computation runs per call of the entry computation."""
  calls: dict[str, list[tuple[str, int]]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group("name")
      if line.startswith("ENTRY"):
        entry = current
      continue
    if current is None:
      continue
    trips = _TRIPS.search(line)
    for kind, callee in _CALLS.findall(line):
      repeat = int(trips.group(1)) if kind == "body" and trips else 1
      calls.setdefault(current, []).append((callee, repeat))
    for group in _BRANCHES.findall(line):
      for callee in re.findall(r"%?([\w.\-]+)", group):
        calls.setdefault(current, []).append((callee, 1))
  counts: dict[str, int] = {}

  def visit(name, times):
    counts[name] = counts.get(name, 0) + times
    for callee, repeat in calls.get(name, ()):
      visit(callee, times * repeat)
  if entry is not None:
    visit(entry, 1)
  return counts


def payloads(hlo_text: str, min_bytes: int = 64) -> dict[tuple[str, int], float]:
  """{(op, group size): payload bytes per step} of every collective in compiled HLO."""
  times = loop_multipliers(hlo_text)
  out: dict[tuple[str, int], float] = {}
  for c in collectives(hlo_text):
    if c.groups is not None and len(c.groups[0]) == 1:
      continue   # groups of one device move nothing
    group = len(c.groups[0]) if c.groups else 0   # 0: every device (XLA prints no groups)
    size = c.bytes
    if c.op == "reduce-scatter":
      size *= group
    if size < min_bytes:
      continue
    key = (c.op, group)
    out[key] = out.get(key, 0.0) + size * times.get(c.computation, 1)
  return out


def total_payload(hlo_text: str) -> float:
  return float(sum(payloads(hlo_text).values()))


def measured_memory(compiled) -> dict[str, int]:
  """XLA's memory analysis of one device's program; `total` = arguments + outputs +
  temporaries, less the outputs that alias donated arguments (they share the buffers)."""
  m = compiled.memory_analysis()
  parts = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes}
  parts["total"] = int(np.sum([parts["arguments"], parts["outputs"], parts["temporaries"]])
                       - parts["aliased"])
  return parts
