"""Polyak averaging of parameters over checkpoints, as Llama 3 did over its annealing phase.

In a run, `polyak_update` folds each annealing checkpoint's parameters into a running mean
(sharded like the parameters). Offline, `average_checkpoints` averages the parameters of saved
checkpoints, reading one at a time: `python -m experiments.average_checkpoints DIR... --out DIR`
(Llama 3 also averages models trained with different data or hyper-parameters, report §4.1.5).
"""

import contextlib
import gc
import io
import json
import logging
import os
import pathlib
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from llama3_jax.checkpoint.manager import _barrier
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
      sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            saved)
    item = {"model": target}
    return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))["model"]


@contextlib.contextmanager
def unreadable_as_user_error(step_dir):
  """Orbax / TensorStore failures reading a checkpoint (missing metadata, truncated array
  files: 20-140-line tracebacks) as one UserError naming the checkpoint. Orbax's warnings
  meanwhile ("Metadata file does not exist" for a step's state/, on every read) are not
  shown: the error says what matters."""
  stderr, absl, level = sys.stderr, logging.getLogger("absl"), logging.getLogger("absl").level
  try:
    sys.stderr = io.StringIO()   # see below
    absl.setLevel(max(level, logging.ERROR))
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
    absl.setLevel(level)
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


# What makes two checkpoints the same architecture (their other fields, e.g. the attention
# kernel or remat, do not change the parameters).
ARCHITECTURE = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                "ffn_dim", "rope_theta", "rope_scaling", "norm_eps", "tie_embeddings")


def _meta(step_dir: pathlib.Path) -> dict | None:
  file = step_dir / "meta" / "metadata"
  return json.loads(file.read_text()) if file.exists() else None


def _architecture(meta: dict | None) -> dict | None:
  if meta is None or "model" not in meta:
    return None
  return {"model_kind": meta.get("model_kind", "lm"),
          **{k: meta["model"].get(k) for k in ARCHITECTURE}}


def spread(abstract, devices=None):
  """Each parameter's sharding over all devices: its first axis that divides by the device
  count, else replicated. Restored this way, a host holds only its devices' share."""
  devices = jax.devices() if devices is None else devices
  mesh = jax.sharding.Mesh(np.array(devices), ("all",))
  n = len(devices)

  def sharding(x):
    axis = next((i for i, d in enumerate(x.shape) if d % n == 0), None)
    spec = [None] * len(x.shape)
    if axis is not None:
      spec[axis] = "all"
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(*spec)))
  return jax.tree.map(sharding, abstract)


def saved_params(step_dir: pathlib.Path):
  """The Orbax metadata (shapes, dtypes) of a checkpoint step's model parameters."""
  path = (step_dir / "state").resolve()
  with unreadable_as_user_error(step_dir):
    return ocp.StandardCheckpointer().metadata(path).item_metadata.tree["model"]


def average_checkpoints(paths, out) -> int:
  """Averages the model parameters of the checkpoints at `paths` (SFT, DPO or reward model
  runs of one architecture: checked before any array is read) into `out` (which must not
  exist), a checkpoint that `load_model`, `init.path`, `export_hf` and `evaluate` read like a
  run's. Parameters are read one checkpoint at a time, each sharded over all devices (of every
  process of a job: each reads and writes only its shards)."""
  out = pathlib.Path(out)
  if out.exists():
    raise UserError(f"--out {out} exists", "choose a new directory for the average")
  if not paths:
    raise ValueError("no checkpoints given")
  steps = [checkpoint_step_dir(path) for path in paths]
  metas = [_meta(step) for step in steps]
  first = _architecture(metas[0])
  shapes, saved_first = None, None
  for path, step, meta in zip(paths, steps, metas):
    now = _architecture(meta)
    if first is not None and now is not None and now != first:
      diff = ", ".join(f"{k}={now[k]} (not {first[k]})" for k in first if now[k] != first[k])
      raise UserError(f"{path} holds another model than {paths[0]} ({diff})",
                      "average checkpoints of one architecture only")
    tree = saved_params(step)
    saved = jax.tree.map(lambda m: (tuple(m.shape), str(m.dtype)), tree)
    if shapes is not None and saved != shapes:
      raise UserError(f"{path} holds another model than {paths[0]} (parameter shapes differ)",
                      "average checkpoints of one model only")
    shapes, saved_first = saved, saved_first or tree
  target = spread(jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved_first))
  average = None
  for count, step in enumerate(steps, start=1):
    params = restore_params(step, target)
    average = params if average is None else polyak_update(average, params, count)
  # Written beside `out` and renamed at the end: an interrupted average is never a checkpoint.
  # Every process writes its shards into the one directory (Orbax); process 0 the rest.
  tmp = out.parent.resolve() / (out.name + ".tmp")
  primary = jax.process_index() == 0
  if primary:
    shutil.rmtree(tmp, ignore_errors=True)   # an interrupted average's
    tmp.mkdir(parents=True)
  _barrier(f"average_checkpoints: {tmp}")
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / "state", {"model": average})
    checkpointer.wait_until_finished()
    if primary:
      meta = dict(metas[0] or {})
      meta["averaged_from"] = [str(pathlib.Path(p).resolve()) for p in steps]
      (tmp / "meta").mkdir()
      (tmp / "meta" / "metadata").write_text(json.dumps(meta))
      os.replace(tmp, out)
  finally:
    if primary:
      shutil.rmtree(tmp, ignore_errors=True)
  _barrier(f"average_checkpoints: {out}")
  return len(paths)
