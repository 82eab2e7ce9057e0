"""How every launcher that touches JAX starts, and who writes the job's files.

    from llama3_jax.runtime import job
    job.start(cpu_devices=8)                       # first, before any JAX computation
    results = score(...)                           # every process, together (collectives)
    job.write_once("results", lambda: write(out, results))   # process 0 writes; all wait

`start` configures JAX for this process (fake CPU devices, the persistent compilation cache,
log lines) and joins the multi-process job the environment describes (`launch.local`, SLURM,
the Kubernetes JobSet: llama3_jax/runtime/distributed.py). With one process it joins nothing.

A job-wide file (metrics, eval.json, results.json, samples, summaries, prepared data) is
written by process 0 alone; the other processes wait for it at a barrier and read what it
wrote, so no two processes ever write one file. Every process computes the same values (the
same inputs, and results gathered from the devices to every process), so nothing has to be
sent from process 0 but the fact that the file is there.
"""

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


def write_once(name: str, write):
  """Process 0 calls `write()`; then every process waits until it is done. Returns what
  `write` returned on process 0, None elsewhere."""
  result = write() if is_primary() else None
  barrier(f"written: {name}")
  return result


def say(*args, **kwargs) -> None:
  """print on process 0 only (launch.local prefixes every process's lines; one is enough)."""
  if is_primary():
    print(*args, **kwargs)
