"""One JAX program over many processes: `jax.distributed`, set up from the environment.

    from llama3_jax.runtime import distributed
    setup = distributed.initialize()     # before any JAX computation; None on one process

Where the job's shape comes from (first match wins):
  1. explicit variables, set by `launch.local` and the Kubernetes manifest:
     JAX_COORDINATOR_ADDRESS=host:port (JAX's own name), JAX_NUM_PROCESSES, JAX_PROCESS_ID;
  2. SLURM (inside `srun`): JAX's own detection (`SlurmCluster`): the coordinator is the first
     node of the step, one JAX process per task; JAX_LOCAL_DEVICE_IDS (read by JAX) picks the
     GPUs of a task when one task drives a whole node;
  3. neither: one process, and nothing to initialise.
Everything else (discovery, heartbeats, the key-value store Orbax checkpoints use) is JAX's.
"""

import dataclasses
import logging
import os

log = logging.getLogger(__name__)

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Setup:
  """How this process joins the job; `coordinator` is None where JAX finds it (SLURM)."""
  source: str               # "env" or "slurm"
  num_processes: int
  process_id: int
  coordinator: str | None


def _int(environ, name: str) -> int:
  value = environ[name]
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer") from None


def detect(environ=None) -> Setup | None:
  """The job's shape from `environ` (default os.environ); None for a single process.

  Raises ValueError with a one-line reason when the variables contradict each other.
  """
  environ = os.environ if environ is None else environ
  given = [name for name in _EXPLICIT if environ.get(name)]
  slurm = all(name in environ for name in _SLURM)
  if given:
    missing = [name for name in _EXPLICIT if name not in given]
    if missing:
      raise ValueError(f"{', '.join(given)} set but {', '.join(missing)} not: a multi-process "
                       f"job needs all of {', '.join(_EXPLICIT)}")
    address = environ["JAX_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port (e.g. "
                       "10.0.0.1:1234, the address of process 0)")
    count, index = _int(environ, "JAX_NUM_PROCESSES"), _int(environ, "JAX_PROCESS_ID")
    if count < 1 or not 0 <= index < count:
      raise ValueError(f"JAX_PROCESS_ID={index} with JAX_NUM_PROCESSES={count}: the id must "
                       f"be in 0..{count - 1}")
    if slurm and _int(environ, "SLURM_NTASKS") != count:
      raise ValueError(f"JAX_NUM_PROCESSES={count} but SLURM_NTASKS="
                       f"{environ['SLURM_NTASKS']}: unset the JAX_* variables inside srun, or "
                       "make them agree")
    return Setup("env", count, index, address) if count > 1 else None
  if slurm and _int(environ, "SLURM_NTASKS") > 1:
    count, index = _int(environ, "SLURM_NTASKS"), _int(environ, "SLURM_PROCID")
    if not 0 <= index < count:
      raise ValueError(f"SLURM_PROCID={index} with SLURM_NTASKS={count}")
    return Setup("slurm", count, index, None)
  return None


def initialize(environ=None) -> Setup | None:
  """Joins the multi-process job the environment describes (see `detect`); idempotent."""
  setup = detect(environ)
  if setup is None:
    return None
  import jax
  if jax.distributed.is_initialized():
    return setup
  if setup.source == "slurm":
    jax.distributed.initialize(cluster_detection_method="slurm")
  else:
    # Explicit values, so that JAX's own auto-detection cannot override them (it would read
    # SLURM variables left in the environment of a job launched from inside an allocation).
    jax.distributed.initialize(setup.coordinator, num_processes=setup.num_processes,
                               process_id=setup.process_id, cluster_detection_method="deactivate")
  log.info("process %d of %d joined the job (%s)", jax.process_index(), jax.process_count(),
           setup.source)
  return setup


def is_primary() -> bool:
  """True on the process that writes job-wide files (metrics, plots, goodput): process 0."""
  import jax
  return jax.process_index() == 0
