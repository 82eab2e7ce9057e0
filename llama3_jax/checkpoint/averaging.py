"""Polyak averaging of parameters over checkpoints, as Llama 3 did over its annealing phase.

In a run, `polyak_update` folds each annealing checkpoint's parameters into a running mean
(sharded like the parameters). Offline, `average_checkpoints` averages the parameters of saved
checkpoints, reading one at a time: `python -m experiments.average_checkpoints DIR... --out DIR`.
"""

import contextlib
import gc
import io
import pathlib
import sys
import time

import jax
import orbax.checkpoint as ocp

from llama3_jax.errors import UserError


@jax.jit
def polyak_update(average, params, count):
  """Mean of `count` parameter sets, given the mean of the first count - 1."""
  return jax.tree.map(lambda a, p: a + (p - a) / count, average, params)


def checkpoint_step_dir(path) -> pathlib.Path:
  """A checkpoint step directory: `path` itself, or the newest step under a run's workdir."""
  path = pathlib.Path(path)
  if (path / "state").is_dir():
    return path
  for root in (path / "checkpoints", path):
    steps = sorted((int(p.name), p) for p in root.glob("*") if p.name.isdigit())
    if steps:
      return steps[-1][1]
  raise FileNotFoundError(f"{path} is neither a checkpoint step directory nor a workdir with "
                          "checkpoints/<step>/")


def restore_params(step_dir, target=None):
  """The model parameters of a checkpoint step, without its optimizer state (Orbax partial
  restore). `target`: ShapeDtypeStructs with the shardings wanted; by default the saved shapes
  on this process's first device, so any device count reads a checkpoint any other wrote."""
  path = (pathlib.Path(step_dir) / "state").resolve()
  with unreadable_as_user_error(step_dir):
    if target is None:
      saved = ocp.StandardCheckpointer().metadata(path).item_metadata.tree["model"]
      sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            saved)
    item = {"model": target}
    return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))["model"]


@contextlib.contextmanager
def unreadable_as_user_error(step_dir):
  """Orbax / TensorStore failures reading a checkpoint (missing metadata, truncated array
  files: 20-140-line tracebacks) as one UserError naming the checkpoint."""
  stderr = sys.stderr
  try:
    sys.stderr = io.StringIO()   # see below
    yield
  except UserError:
    raise
  except Exception as error:  # noqa: BLE001 - Orbax raises many kinds; all mean "unreadable"
    # TensorStore reads still in flight complete into Orbax's closed event loop, and each
    # prints "RuntimeError: Event loop is closed" from its thread: let them finish unheard.
    _until_quiet(sys.stderr)
    detail = " ".join(str(error).split())[:160]
    raise UserError(f"checkpoint {step_dir} cannot be read ({type(error).__name__}: {detail}); "
                    "it is corrupt or incomplete", "give another checkpoint step directory "
                    "(WORKDIR/checkpoints/<step>)") from error
  finally:
    sys.stderr, captured = stderr, sys.stderr.getvalue()
    if "Event loop is closed" not in captured:
      stderr.write(captured)


def _until_quiet(sink: io.StringIO, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
  """Waits until nothing more is written to `sink` for `quiet_s` (at most `limit_s`)."""
  gc.collect()
  start, size, changed = time.monotonic(), -1, time.monotonic()
  while time.monotonic() - start < limit_s and time.monotonic() - changed < quiet_s:
    if len(sink.getvalue()) != size:
      size, changed = len(sink.getvalue()), time.monotonic()
    time.sleep(0.05)


def average_checkpoints(paths, out) -> int:
  """Averages the model parameters of the checkpoints at `paths`; writes them to `out` (which
  must not exist: checked before any checkpoint is read)."""
  if pathlib.Path(out).exists():
    raise UserError(f"--out {out} exists", "choose a new directory for the average")
  average, shapes = None, None
  for count, path in enumerate(paths, start=1):
    params = restore_params(checkpoint_step_dir(path))
    now = jax.tree.map(lambda x: (x.shape, str(x.dtype)), params)
    if shapes is not None and now != shapes:
      raise UserError(f"{path} holds another model than {paths[0]} (parameter shapes differ)",
                      "average checkpoints of one model only")
    shapes = now
    average = params if average is None else polyak_update(average, params, count)
  if average is None:
    raise ValueError("no checkpoints given")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(pathlib.Path(out).resolve(), average)
  checkpointer.wait_until_finished()
  return len(paths)
