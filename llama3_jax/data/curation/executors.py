"""Executors: who runs a pipeline's tasks. Stages run in order; the tasks of a stage at once.

  local  a process pool on this machine (no engine; the default, and what CI uses); 1 task
         runs in this process
  ray    Ray tasks: `ray.init()` joins the cluster RAY_ADDRESS names, or starts a local one
  slurm  writes one sbatch file per stage (a job array of its tasks) and submit.sh, which
         submits them with `--dependency=afterok` between stages; nothing runs here

Whatever runs them, a task is `tasks.run_task(work, stage, rank, world)`, so the outputs are
the same bytes, and a relaunch runs only the units without a completion marker.
"""

import concurrent.futures
import multiprocessing
import os
import pathlib
import shlex
import socket
import sys
import time

from llama3_jax.data.curation import tasks as tasks_lib
from llama3_jax.errors import UserError

EXECUTORS = ("local", "ray", "slurm")
ROOT = pathlib.Path(__file__).resolve().parents[3]
SLURM_TEMPLATE = ROOT / "launch" / "slurm" / "data_stage.sbatch"


def run_pipeline(work, executor: str = "local", tasks: int = 1, workers: int = 0,
                 log=None, stages=None, part=(0, 1)):
  """Runs the stages of the pipeline in `work` in order (or, for slurm, writes job files).

  `tasks`: the world size of each stage (fewer where a stage has fewer units); `workers`:
  processes of the local pool (0 = all CPUs); `stages`: the names to run (default all); `part`:
  (index, count) runs only the units u with u % count == index (one machine's share).
  Returns the path of submit.sh for slurm, else None.
  """
  if executor not in EXECUTORS:
    raise UserError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}",
                    "give local, ray or slurm")
  if tasks < 1:
    raise UserError(f"--tasks {tasks}", "give at least 1 task per stage")
  log = log or (lambda message: None)
  chosen = [s for s in tasks_lib.load_stages(work) if stages is None or s.name in stages]
  if executor == "slurm":
    return write_slurm(work, chosen, tasks, log)
  with _runner(executor, tasks, workers) as run:
    for stage in chosen:
      _run_stage(work, stage, tasks, run, log, part)
  return None


def _run_stage(work, stage, tasks, run, log, part=(0, 1)):
  units = stage.units()
  index, count = part
  world = count * max(1, min(tasks, units) // count)   # a multiple of count: ranks split parts
  pending = [u for u in tasks_lib.pending_units(work, stage, units) if u % count == index]
  ranks = sorted({u % world for u in pending})
  if not ranks:
    log(f"{stage.name}: {units} units already done")
    return
  start = time.perf_counter()
  docs, done = 0, 0
  for summary in run(work, stage.name, ranks, world):
    done += 1
    docs += summary["docs"]
    rate = docs / max(time.perf_counter() - start, 1e-9)
    log(f"{stage.name}: tasks {done}/{len(ranks)} done, {docs:,} docs, {rate:,.0f} docs/s")
  if any(u % count == index for u in tasks_lib.pending_units(work, stage, units)):
    raise RuntimeError(f"stage {stage.name} finished with units missing their markers")


class _runner:
  """A context manager giving `run(work, stage, ranks, world)`, yielding task summaries."""

  def __init__(self, executor, tasks, workers):
    self.executor, self.tasks, self.workers = executor, tasks, workers
    self.pool = None

  def __enter__(self):
    if self.executor == "ray":
      self.remote = start_ray()
      return self._run_ray
    processes = min(self.tasks, self.workers or os.cpu_count() or 1)
    if processes > 1:
      # Spawned, not forked: forking a process that runs threads (JAX, Ray) can deadlock.
      self.pool = concurrent.futures.ProcessPoolExecutor(
          processes, mp_context=multiprocessing.get_context("spawn"))
      return self._run_pool
    return self._run_here

  def __exit__(self, *exc):
    if self.pool is not None:
      self.pool.shutdown(cancel_futures=True)
    return False

  @staticmethod
  def _run_here(work, stage, ranks, world):
    for rank in ranks:
      yield tasks_lib.run_task(work, stage, rank, world)

  def _run_pool(self, work, stage, ranks, world):
    futures = [self.pool.submit(tasks_lib.run_task, work, stage, r, world) for r in ranks]
    try:
      for future in concurrent.futures.as_completed(futures):
        if future.exception() is not None:
          # Every task runs to its own first failure; the lowest failed unit is reported,
          # the one a single task (and --strict's "the first bad line") would name.
          concurrent.futures.wait(futures)
          errors = [f.exception() for f in futures if f.exception() is not None]
          raise min(errors, key=lambda e: getattr(e, "unit", float("inf")))
        yield future.result()
    except concurrent.futures.process.BrokenProcessPool as error:
      raise tasks_lib.TaskFailed(f"a {stage} task's process died ({error})",
                                 "relaunch: finished tasks are kept") from None
    finally:
      for future in futures:
        future.cancel()

  def _run_ray(self, work, stage, ranks, world):
    import ray
    refs = [self.remote.remote(str(work), stage, r, world) for r in ranks]
    while refs:
      ready, refs = ray.wait(refs, num_returns=1)
      try:
        yield ray.get(ready[0])
      except ray.exceptions.RayTaskError as error:
        for ref in refs:
          ray.cancel(ref)
        cause = getattr(error, "cause", None)
        raise (cause if isinstance(cause, UserError) else error) from None


def start_ray(num_cpus: int | None = None):
  """`ray.init()`: joins RAY_ADDRESS's cluster or starts a local one (of `num_cpus`); returns
  the remote task. No Ray, or no cluster at RAY_ADDRESS, is one line (ray.init itself would
  wait minutes for an address nobody answers)."""
  try:
    import ray
  except ImportError:
    raise UserError("--executor ray needs Ray, which is not installed",
                    "pip install 'ray==2.60.0' (requirements.txt), or use --executor local"
                    ) from None
  address = os.environ.get("RAY_ADDRESS") or None
  _check_address(address)
  # Tasks import llama3_jax: the workers of a local cluster (or of one sharing this file
  # system) find it on PYTHONPATH.
  env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
      filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}}
  if not ray.is_initialized():
    try:
      ray.init(address=address, num_cpus=None if address else num_cpus, runtime_env=env,
               include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
      raise UserError(f"no Ray cluster at RAY_ADDRESS={address!r} ({error})",
                      "start one (ray start --head) or unset RAY_ADDRESS to run a local one"
                      ) from None
  return ray.remote(num_cpus=1, max_retries=0)(tasks_lib.run_task)


def _check_address(address: str | None) -> None:
  """A host:port address (ray:// or not) must accept a connection within a few seconds."""
  if address in (None, "auto", "local"):
    return
  host, _, port = address.removeprefix("ray://").rpartition(":")
  try:
    socket.create_connection((host, int(port)), timeout=5).close()
  except (OSError, ValueError) as error:
    raise UserError(f"no Ray cluster at RAY_ADDRESS={address!r} ({error})",
                    "start one (ray start --head), fix the address, or unset RAY_ADDRESS to "
                    "run a local one") from None


def write_slurm(work, stages, tasks, log) -> pathlib.Path:
  """One sbatch file per stage, a job array of its tasks, and submit.sh chaining them."""
  work = pathlib.Path(work).resolve()
  folder = work / "slurm"
  folder.mkdir(parents=True, exist_ok=True)
  template = SLURM_TEMPLATE.read_text(encoding="utf-8")
  lines = ["#!/usr/bin/env bash",
           "# Submits the pipeline's stages as SLURM job arrays, each after the previous one.",
           "set -euo pipefail", 'cd "$(dirname "$0")"', "previous="]
  for k, stage in enumerate(stages):
    world = max(1, min(tasks, stage.max_tasks or tasks))
    path = folder / f"{k:02d}-{stage.name}.sbatch"
    path.write_text(template.format(
        stage=stage.name, world=world, last=world - 1, work=shlex.quote(str(work)),
        repo=shlex.quote(str(ROOT)), python=shlex.quote(sys.executable)), encoding="utf-8")
    lines.append(f"previous=$(sbatch --parsable ${{previous:+--dependency=afterok:$previous}} "
                 f"{path.name})")
    lines.append(f'echo "{stage.name}: job $previous ({world} tasks)"')
  submit = folder / "submit.sh"
  submit.write_text("\n".join(lines) + "\n", encoding="utf-8")
  submit.chmod(0o755)
  log(f"wrote {len(stages)} sbatch files; submit them with: bash {submit}")
  return submit
