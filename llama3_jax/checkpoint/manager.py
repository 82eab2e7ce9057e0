"""Orbax checkpoints of the training state: async saves, retention, resume that skips bad ones.

Each checkpoint step holds `state` (parameters, optimizer state, step counters), `meta` (JSON:
tokens seen, RNG seed, the config), `data` (the data loader's per-stream state, when training
reads real data) and, during annealing, `average` (the Polyak average of the parameters).
Orbax writes a step into a temporary directory and renames it when complete, so a save killed
midway never looks like a checkpoint; one that is unreadable anyway is skipped with a warning
and the previous one is used. With several JAX processes every process calls every method
(Orbax synchronises them), and they agree on whether a checkpoint could be read, since each
reads only its own shards.
"""

import contextlib
import gc
import io
import logging
import os
import pathlib
import re
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from llama3_jax.checkpoint.data_state import DataStateRestore, DataStateSave

log = logging.getLogger(__name__)


class Checkpointer:

  def __init__(self, directory, *, max_to_keep: int = 3, keep_period: int | None = None,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).resolve()   # Orbax needs absolute paths
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.set_aside: list[int] = []   # steps the last restore found unreadable and moved aside

  def save(self, step: int, state, meta: dict, average=None, data: dict | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if average is not None:
      items["average"] = ocp.args.StandardSave(average)
    if data is not None:
      items["data"] = DataStateSave(data)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore_latest(self, abstract_state, abstract_average=None, data_streams=(),
                     at_most: int | None = None, check=None):
    """(step, state, meta, average, data) of the newest readable checkpoint, or None.

    `abstract_*` are ShapeDtypeStructs carrying the shardings wanted now: Orbax reshards, so a
    run saved on one mesh resumes on another. `data` holds the states of `data_streams`.
    `at_most`: only checkpoints of that step or earlier (a rollback). `check(meta)` runs on
    each checkpoint's meta before its arrays are read; what it raises (say, a checkpoint of
    another model) propagates, and nothing is set aside.
    """
    steps = [s for s in self.manager.all_steps() if at_most is None or s <= at_most]
    self.set_aside = []   # the steps this call found unreadable
    for step in sorted(steps, reverse=True):
      error = meta = None
      with closed_loop_noise_dropped(lambda: error is not None):
        try:
          meta = self.manager.restore(step, args=ocp.args.Composite(
              meta=ocp.args.JsonRestore()))["meta"]
        except Exception as caught:  # noqa: BLE001 - any unreadable checkpoint is skipped
          error = caught
      if meta is not None and check is not None:
        check(meta)
      with closed_loop_noise_dropped(lambda: error is not None):
        try:
          if error is None:
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if meta.get("has_average") and abstract_average is not None:
              items["average"] = ocp.args.StandardRestore(abstract_average)
            if meta.get("has_data") and data_streams:
              items["data"] = DataStateRestore(list(data_streams))
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as caught:  # noqa: BLE001 - any unreadable checkpoint is skipped
          error = caught
      if _all_processes(error is None):
        return step, restored["state"], meta, restored.get("average"), restored.get("data")
      # Set aside, never deleted: the run will write this step again, and someone may want
      # to look at what went wrong.
      aside = self.directory / f"{step}.corrupt-{int(time.time())}"
      first_line = (str(error).splitlines() or [""])[0][:200]
      reason = (f"{type(error).__name__}: {first_line}" if error
                else "unreadable on another process")
      log.warning("checkpoint at step %d is incomplete or corrupt (%s); moved to %s, trying "
                  "the previous one", step, reason, aside)
      if jax.process_index() == 0:
        os.replace(self.directory / str(step), aside)
      self.set_aside.append(step)
      _barrier(f"checkpoint_set_aside_{step}")
      self.manager.reload()
    return None

  def latest_step(self) -> int | None:
    """The newest checkpoint's step (not checked for readability), or None."""
    return self.manager.latest_step()

  def delete_after(self, step: int) -> None:
    """Deletes the checkpoints of steps after `step` (a rollback makes them another history)."""
    self.manager.wait_until_finished()
    for later in sorted(s for s in self.manager.all_steps() if s > step):
      self.manager.delete(later)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# The lines of Python tracebacks: their header, indented frames, the closed loop's last line.
_TRACEBACK_LINE = re.compile(r"^(Traceback \(most recent call last\):|Exception ignored in.*|"
                             r"[ \t].*|RuntimeError: Event loop is closed)$")


@contextlib.contextmanager
def closed_loop_noise_dropped(failed):
  """Orbax's TensorStore reads still in flight when a restore fails complete into its closed
  event loop, and each prints "RuntimeError: Event loop is closed" with a traceback from its
  thread (dozens for one checkpoint, after the one line that matters). Inside this, stderr is
  held; where `failed()`, those reads are let finish; what is not such a traceback is passed
  on (the threads' tracebacks interleave, so it goes by line)."""
  stderr, held = sys.stderr, io.StringIO()
  sys.stderr = held
  try:
    yield
  finally:
    if failed():
      _until_quiet(held)
    sys.stderr = stderr
    text = held.getvalue()
    if "Event loop is closed" in text:
      text = "".join(line for line in text.splitlines(keepends=True)
                     if not _TRACEBACK_LINE.match(line.rstrip("\n")))
    stderr.write(text)


def _until_quiet(sink: io.StringIO, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
  """Waits until nothing more is written to `sink` for `quiet_s` (at most `limit_s`)."""
  gc.collect()   # coroutines of the failed restore, collected (and heard) now
  start, size, changed = time.monotonic(), -1, time.monotonic()
  while time.monotonic() - start < limit_s and time.monotonic() - changed < quiet_s:
    if len(sink.getvalue()) != size:
      size, changed = len(sink.getvalue()), time.monotonic()
    time.sleep(0.05)


def _all_processes(ok: bool) -> bool:
  """True where every JAX process says True."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or abstract) with the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
