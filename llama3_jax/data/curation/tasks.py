"""Stages as tasks: units of work joined by files, run by tasks indexed by (rank, world_size).

A pipeline (curation, tokenization) is a list of `Stage`s over one work directory. A stage is a
number of *units* (an input file, a key range of a bucket, one global merge) and a function that
runs one unit, reads its inputs from files earlier stages wrote and writes its own outputs under
temporary names renamed into place. Task `rank` of `world_size` runs units
`rank, rank + world_size, ...`; a unit that finished left a completion marker (a small JSON of
its statistics, written last), so a relaunch after a crash or SIGKILL runs only the units
without one. Outputs never depend on how units are grouped into tasks, so 1 task, N tasks, a
process pool, Ray or a SLURM array give the same bytes.

The work directory holds `spec.json`: the dotted name of the function that builds the stages
and its arguments. Every task rebuilds the stages from it, in whatever process or machine runs
the task, e.g. a SLURM array task:

  python -m llama3_jax.data.curation.tasks --work OUT/_work --stage scan --rank 3 --world 8
"""

import argparse
import dataclasses
import importlib
import json
import os
import pathlib
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np

from llama3_jax.errors import UserError

SPEC = "spec.json"
# "stage:unit": SIGKILL the process running that unit right after its marker (the crash tests).
FAULT_ENV = "LLAMA3_JAX_TASK_FAULT"


@dataclasses.dataclass
class Stage:
  """One stage: `units()` units of work, `run(unit)` runs one and returns its statistics."""
  name: str
  units: Callable[[], int]             # may read what earlier stages wrote
  run: Callable[[int], dict]           # numbers in the result are summed into stage stats
  describe: Callable[[int], str] = str   # the input a unit reads, named when it fails
  max_tasks: int | None = None         # the unit count when known before the stage runs
  marker: Callable[[int], pathlib.Path] | None = None   # default: work/<stage>/done/<unit>.json


class TaskFailed(UserError):
  """A unit failed on bad input (or a bug, whose traceback the message carries)."""


def save_json(path, value) -> None:
  """Writes `value` as JSON under a temporary name, then renames it into place."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                 encoding="utf-8")
  os.replace(tmp, path)


def save_npy(path, array: np.ndarray) -> None:
  """np.save under a temporary name, then renamed (a reader never sees half an array)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:            # a file object: np.save would append .npy to the name
    np.save(f, np.ascontiguousarray(array))
  os.replace(tmp, path)


def load_npy(path, mmap: bool = False) -> np.ndarray:
  """An array a stage wrote; memory-mapped readers slice it without loading it all."""
  return np.load(path, mmap_mode="r" if mmap else None)


def fingerprint(path) -> list:
  """(size, mtime_ns) of an input file: what `make` and rsync compare to see a change."""
  st = os.stat(path)
  return [st.st_size, st.st_mtime_ns]


def write_spec(work: pathlib.Path, builder: str, args: dict) -> None:
  save_json(work / SPEC, {"builder": builder, "args": args})


_BUILT: dict = {}


def load_stages(work) -> list[Stage]:
  """The stages of the pipeline in `work`, rebuilt from its spec.json (cached per process)."""
  work = pathlib.Path(work).resolve()
  text = (work / SPEC).read_text(encoding="utf-8")
  key = (str(work), text)
  if key not in _BUILT:
    spec = json.loads(text)
    module, name = spec["builder"].split(":")
    _BUILT.clear()
    _BUILT[key] = getattr(importlib.import_module(module), name)(work, **spec["args"])
  return _BUILT[key]


def stage_named(work, name: str) -> Stage:
  for stage in load_stages(work):
    if stage.name == name:
      return stage
  raise KeyError(f"no stage {name!r} in {work}")


def marker_path(work, stage: Stage, unit: int) -> pathlib.Path:
  if stage.marker is not None:
    return stage.marker(unit)
  return pathlib.Path(work) / stage.name / "done" / f"{unit:06d}.json"


def pending_units(work, stage: Stage, units: int) -> list[int]:
  return [u for u in range(units) if not marker_path(work, stage, u).exists()]


def run_task(work, stage_name: str, rank: int, world: int) -> dict:
  """Runs the unfinished units of task `rank` of `world` of one stage; returns a summary."""
  stage = stage_named(work, stage_name)
  units = stage.units()
  summary = {"stage": stage_name, "rank": rank, "units": 0, "skipped": 0, "docs": 0,
             "seconds": 0.0}
  for unit in range(rank, units, world):
    marker = marker_path(work, stage, unit)
    if marker.exists():
      summary["skipped"] += 1
      continue
    _reset_peak_rss()
    start = time.perf_counter()
    try:
      stats = stage.run(unit)
    except UserError as error:     # bad input: its own message names the file and line
      failed = type(error)(*_with_relaunch(error, work))
      failed.unit = unit   # executors report the lowest failed unit: what 1 task would say
      raise failed from None
    except Exception as error:  # noqa: BLE001 - named with its unit, traceback kept
      failed = TaskFailed(
          f"stage {stage_name} task {rank}/{world} failed on {stage.describe(unit)}: "
          f"{type(error).__name__}: {error}\n{traceback.format_exc()}",
          f"fix it and relaunch: {_relaunch(work)}")
      failed.unit = unit
      raise failed from None
    seconds = time.perf_counter() - start
    stats = {**stats, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
    save_json(marker, stats)
    if os.environ.get(FAULT_ENV) == f"{stage_name}:{unit}":
      os.kill(os.getpid(), signal.SIGKILL)
    summary["units"] += 1
    summary["docs"] += stats.get("docs", 0)
    summary["seconds"] += seconds
  return summary


def _reset_peak_rss() -> None:
  """Linux: restart the process's peak-RSS count, so a unit's marker holds its own peak."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def _peak_rss_mb() -> float:
  """Peak resident memory since `_reset_peak_rss` (VmHWM), else since the process began."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _relaunch(work) -> str:
  spec = json.loads((pathlib.Path(work) / SPEC).read_text(encoding="utf-8"))
  return spec["args"].get("relaunch") or "the same command (finished tasks are kept)"


def _with_relaunch(error: UserError, work) -> tuple:
  """The error's (what, fix), the fix ending with how to relaunch (one line still)."""
  what, fix = getattr(error, "what", str(error)), getattr(error, "fix", "")
  again = f"then relaunch: {_relaunch(work)}"
  return (what, f"{fix}; {again}") if fix else (f"{what}; {again}",)


def stage_stats(work, stage: Stage) -> dict:
  """The sums over a stage's unit markers: documents, seconds, and its own counters."""
  totals: dict = {"units": 0}
  peak = 0.0
  for unit in range(stage.units()):
    path = marker_path(work, stage, unit)
    if not path.exists():
      continue
    totals["units"] += 1
    for key, value in json.loads(path.read_text(encoding="utf-8")).items():
      if key == "peak_rss_mb":
        peak = max(peak, value)
      elif isinstance(value, (int, float)) and not isinstance(value, bool):
        totals[key] = totals.get(key, 0) + value
  totals["peak_rss_mb_per_task"] = round(peak, 1)
  if totals.get("seconds"):
    totals["docs_per_s_per_core"] = round(totals.get("docs", 0) / totals["seconds"], 1)
  return totals


def main(argv=None) -> None:
  """One task of one stage (what a SLURM array task runs)."""
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--work", required=True)
  parser.add_argument("--stage", required=True)
  parser.add_argument("--rank", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)))
  parser.add_argument("--world", type=int, required=True)
  args = parser.parse_args(argv)
  summary = run_task(args.work, args.stage, args.rank, args.world)
  print(json.dumps(summary), file=sys.stdout)


if __name__ == "__main__":
  from llama3_jax import cli
  cli.run(main)
