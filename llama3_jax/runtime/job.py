"""How every launcher that touches JAX starts, and who writes the job's files.

    from llama3_jax.runtime import job
    job.start(cpu_devices=8)                       # first, before any JAX computation
    results = score(...)                           # every process, together (collectives)
    job.write_once("results", lambda: write(out, results))   # process 0 writes; all wait

`start` configures JAX for this process (fake CPU devices, the persistent compilation cache,
log lines) and joins the multi-process job the environment describes (`launch.local`, SLURM,
the Kubernetes JobSet: llama3_jax/runtime/distributed.py). With one process it joins nothing.

A job-wide file (metrics, eval.json, results.json, samples, summaries, prepared data) is
written by process 0 alone; the other processes wait for it and read what it wrote, so no two
processes ever write one file. Every process computes the same values (the same inputs, and
results gathered from the devices to every process), so nothing has to be sent from process 0
but the outcome: done, or its error, which the others raise too (bad input: exit 2 on every
process at once, not a job left waiting for a process that has gone).
"""

import itertools
import logging
import os

from llama3_jax.errors import UserError
from llama3_jax.runtime import distributed


def start(cpu_devices: int | None = 8, *, compilation_cache=None,
          log_level: int = logging.INFO) -> distributed.Setup | None:
  """Configures JAX and joins the job; returns how (None: a single process).

  `cpu_devices`: fake CPU devices per process (ignored on GPU/TPU); the environment wins
  (JAX_NUM_CPU_DEVICES, which `launch.local --devices-per-process` sets, or XLA_FLAGS'
  --xla_force_host_platform_device_count). `compilation_cache`: a directory for JAX's
  persistent cache (JAX_COMPILATION_CACHE_DIR wins). A contradictory environment is a
  UserError."""
  import jax
  forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
  if cpu_devices and "JAX_NUM_CPU_DEVICES" not in os.environ and not forced:
    jax.config.update("jax_num_cpu_devices", cpu_devices)
  if compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # JAX's persistent cache: a relaunch (a restart after preemption, the next run of the same
    # config) loads its compiled programs instead of compiling them again.
    jax.config.update("jax_compilation_cache_dir", str(compilation_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  logging.basicConfig(level=log_level, format="%(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)   # Orbax's progress lines
  try:
    return distributed.initialize()
  except ValueError as error:   # the environment's variables contradict each other
    raise UserError(f"cannot join the job: {error}",
                    "fix the JAX_* / SLURM_* variables, or start it with python -m "
                    "launch.local") from None


def is_primary() -> bool:
  """True on process 0, the one that writes job-wide files and prints the summary."""
  return distributed.is_primary()


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (no-op with one process). `name` must be
  the same on every process."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


_WRITES = itertools.count()   # every process calls write_once in the same order
_WAIT_MS = 7 * 24 * 3600 * 1000   # as long as process 0 takes (a big prepared data set)


def write_once(name: str, write):
  """Process 0 calls `write()`; the others wait until it is done, and raise its error if it
  failed (a UserError for bad input, a RuntimeError for a bug). Returns what `write` returned
  on process 0, None elsewhere."""
  import jax
  if jax.process_count() == 1:
    return write()
  # The job's key-value store (jax.distributed's, which Orbax uses too): process 0 posts the
  # outcome under a key the others wait on.
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  key = f"llama3_jax/write_once/{next(_WRITES)}"
  if is_primary():
    try:
      result = write()
    except BaseException as error:
      from llama3_jax import cli
      client.key_value_set(key, ("bad input:" if cli.is_expected(error) else "failed:")
                           + cli.one_line(error))
      raise
    client.key_value_set(key, "done:")
    return result
  outcome, _, message = client.blocking_key_value_get(key, _WAIT_MS).partition(":")
  if outcome == "bad input":
    raise UserError(f"process 0 stopped while writing {name}: {message}")
  if outcome != "done":
    raise RuntimeError(f"process 0 failed while writing {name}: {message}")
  return None


def say(*args, **kwargs) -> None:
  """print on process 0 only (launch.local prefixes every process's lines; one is enough)."""
  if is_primary():
    print(*args, **kwargs)
