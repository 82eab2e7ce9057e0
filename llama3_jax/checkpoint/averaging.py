"""Polyak averaging of parameters over checkpoints, as Llama 3 did over its annealing phase.

In a run, `polyak_update` folds each annealing checkpoint's parameters into a running mean
(sharded like the parameters). Offline, `average_checkpoints` averages the parameters of saved
checkpoints, reading one at a time: `python -m experiments.average_checkpoints DIR... --out DIR`.
"""

import pathlib

import jax
import orbax.checkpoint as ocp


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
  if target is None:
    saved = ocp.StandardCheckpointer().metadata(path).item_metadata.tree["model"]
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          saved)
  item = {"model": target}
  return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True))["model"]


def average_checkpoints(paths, out) -> int:
  """Averages the model parameters of the checkpoints at `paths`; writes them to `out`."""
  average, shapes = None, None
  for count, path in enumerate(paths, start=1):
    params = restore_params(checkpoint_step_dir(path))
    now = jax.tree.map(lambda x: (x.shape, str(x.dtype)), params)
    if shapes is not None and now != shapes:
      raise ValueError(f"{path} holds another model than {paths[0]} (parameter shapes differ); "
                       "average checkpoints of one model only")
    shapes = now
    average = params if average is None else polyak_update(average, params, count)
  if average is None:
    raise ValueError("no checkpoints given")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(pathlib.Path(out).resolve(), average)
  checkpointer.wait_until_finished()
  return len(paths)
