"""Orbax checkpoints of the training state: async saves, retention, resume that skips bad ones.

Each checkpoint step holds `state` (parameters, optimizer state, step counters), `meta` (JSON:
tokens seen, RNG seed, the config), `data` (the data loader's per-stream state, when training
reads real data) and, during annealing, `average` (the Polyak average of the parameters). Orbax writes a step into a temporary directory and renames it when
complete, so a save killed midway never looks like a checkpoint; one that is unreadable anyway
is skipped with a warning and the previous one is used.
"""

import logging
import os
import pathlib
import time

import jax
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

  def save(self, step: int, state, meta: dict, average=None, data: dict | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if average is not None:
      items["average"] = ocp.args.StandardSave(average)
    if data is not None:
      items["data"] = DataStateSave(data)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore_latest(self, abstract_state, abstract_average=None, data_streams=()):
    """(step, state, meta, average, data) of the newest readable checkpoint, or None.

    `abstract_*` are ShapeDtypeStructs carrying the shardings wanted now: Orbax reshards, so a
    run saved on one mesh resumes on another. `data` holds the states of `data_streams`.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if meta.get("has_average") and abstract_average is not None:
          items["average"] = ocp.args.StandardRestore(abstract_average)
        if meta.get("has_data") and data_streams:
          items["data"] = DataStateRestore(list(data_streams))
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped
        # Set aside, never deleted: the run will write this step again, and someone may want
        # to look at what went wrong.
        aside = self.directory / f"{step}.corrupt-{int(time.time())}"
        log.warning("checkpoint at step %d is incomplete or corrupt (%s: %s); moved to %s, "
                    "trying the previous one", step, type(error).__name__,
                    str(error).split("\n")[0][:200], aside)
        os.replace(self.directory / str(step), aside)
        self.manager.reload()
        continue
      return step, restored["state"], meta, restored.get("average"), restored.get("data")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or abstract) with the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
