"""A training run's checkpoints: what each one holds, resume and rollback, Polyak averaging.

    checkpoints = RunCheckpoints(workdir, config, setup, plan, meta={...}, data_streams=range(8))
    step, state, meta, data = checkpoints.restore()     # newest readable one, or (0, new, {}, ...)
    batches.set_state(*data, plan.stages)               # the data iterator resumes there too
    checkpoints.save(step, state, data, rollbacks=n)    # what the Checkpointing hook does
    checkpoints.close()                                 # waits for the saves
    checkpoints.export_average()                        # the anneal's mean: averaged_params/

A checkpoint holds the state, the data iterator's place (its per-stream states, and
`data_skip`: batches read minus steps, non-zero after a rollback skipped data), and a JSON
`meta` (tokens, seed, the config, the resolved model). During the final anneal each saved
checkpoint's parameters are folded into a running mean (Llama 3 released that average, report
§3.4.3); the average is checkpointed with the state so a resumed run averages the same ones.
"""

import dataclasses
import logging
import pathlib

import orbax.checkpoint as ocp

from llama3_jax.checkpoint.averaging import polyak_update
from llama3_jax.checkpoint.manager import Checkpointer
from llama3_jax.runtime.hooks import Hook

log = logging.getLogger(__name__)


class RunCheckpoints:

  def __init__(self, workdir: pathlib.Path, config, setup, plan, *, meta: dict,
               data_streams=(), initial=None):
    """`data_streams`: the data source's streams with a state to save (Source.state_streams);
    `initial`: () -> the state a run without checkpoints starts from (default: random)."""
    self.workdir, self.setup, self.plan, self.data_streams = workdir, setup, plan, data_streams
    self.initial = initial or setup.init_state
    self.base_meta, self.config = meta, config
    self.checkpointer = Checkpointer(
        workdir / "checkpoints", max_to_keep=config.max_to_keep,
        keep_period=config.keep_period, async_save=config.async_save)
    self.average, self.averaged = None, 0   # the running mean over the anneal, and its count

  @property
  def directory(self) -> pathlib.Path:
    return self.checkpointer.directory

  def latest_step(self) -> int:
    return self.checkpointer.latest_step() or 0

  def restore(self, at_most: int | None = None, data: bool = True):
    """(step, state, meta, data) of the newest readable checkpoint (at most `at_most`), or of a
    new state (0, ..., {}, (0, {})). `data`: (batches read, the streams' states) where that
    checkpoint's data iterator was (Batches.set_state), or None when not asked for."""
    streams = self.data_streams if data else ()
    restored = self.checkpointer.restore_latest(
        self.setup.abstract_state, self.setup.abstract_model, data_streams=streams,
        at_most=at_most, check=self._same_model)
    if restored is None and self.checkpointer.set_aside and at_most is None and not (
        self.config.restart_if_unreadable):
      raise ValueError(f"no usable checkpoint in {self.directory}: all of steps "
                       f"{sorted(self.checkpointer.set_aside)} were unreadable (moved aside as "
                       "<step>.corrupt-<time>, nothing deleted); pass --config.checkpoint."
                       "restart_if_unreadable=True to start this run over from step 0")
    if restored is None:
      self.average, self.averaged = None, 0
      return 0, self.initial(), {}, (0, {}) if data else None
    step, state, meta, self.average, data_state = restored
    self.averaged = meta.get("averaged", 0)
    return step, state, meta, (step + meta.get("data_skip", 0), data_state) if data else None

  def _same_model(self, meta: dict) -> None:
    """A checkpoint of another run is a clear error, before any array is read (not a corrupt
    checkpoint to set aside): another model, or its data split into another number of streams."""
    saved, now = meta.get("model"), self.base_meta["model"]
    if saved is not None and saved != now:
      fields = ", ".join(f"{k}={saved.get(k)} (now {now.get(k)})" for k in now
                         if saved.get(k) != now.get(k))
      raise ValueError(f"{self.workdir} holds checkpoints of another model ({fields}); use a "
                       "new --workdir, or the model config the checkpoints were made with")
    streams, now_streams = meta.get("data_streams"), len(self.data_streams)
    if meta.get("has_data") and streams is not None and streams != now_streams:
      raise ValueError(f"{self.workdir} holds checkpoints whose data was read as "
                       f"data.streams={streams}, now {now_streams}: set --config.data.streams="
                       f"{streams} to resume exactly, or use a new --workdir")

  def rollback(self, before: int):
    """Back to the newest checkpoint at or before step `before`; later ones are deleted (they
    are another history). The batch iterator keeps its place: the steps after read new data."""
    self.checkpointer.wait()
    step, state, meta, _ = self.restore(at_most=before, data=False)
    self.checkpointer.delete_after(step)
    return step, state, meta

  def save(self, done: int, state, data: tuple[int, dict | None], **meta) -> None:
    """Saves step `done`: the state, `data` = (batches read, the data streams' states) and
    `meta` beside the run's own."""
    plan = self.plan
    if plan.anneal_tokens and plan.tokens[done] > plan.anneal_from:
      self.averaged += 1
      # (a fresh array even for the first: `state` is donated to the next step)
      self.average = polyak_update(state["model"] if self.average is None else self.average,
                                   state["model"], self.averaged)
    position, data_state = data
    meta = {**self.base_meta, **meta, "step": done, "tokens": plan.tokens[done],
            "averaged": self.averaged, "has_average": self.average is not None,
            "has_data": data_state is not None, "data_skip": position - done,
            "data_streams": len(self.data_streams)}
    self.checkpointer.save(done, state, meta, self.average, data_state)

  def close(self) -> None:
    self.checkpointer.close()

  def export_average(self) -> dict:
    """Writes the averaged parameters (every process its shards) to WORKDIR/averaged_params;
    what it did, for the run's summary."""
    if self.average is None:
      return {}
    exporter = ocp.StandardCheckpointer()
    exporter.save((self.workdir / "averaged_params").resolve(), self.average, force=True)
    exporter.wait_until_finished()
    return {"averaged_checkpoints": self.averaged}


class Checkpointing(Hook):
  """The training loop's hook that saves the run: every `every` steps, at the last step and at
  a stop request (SIGTERM, a preemption notice), never after a step the guard rolls back; then
  it tells every hook in `hooks` (`after_save`).

  `data`: () -> (batches read, the data streams' states); `meta`: () -> more of the step's meta.
  """

  def __init__(self, checkpoints: RunCheckpoints, every: int, data, meta, hooks=()):
    self.checkpoints, self.every, self.data, self.meta, self.hooks = (
        checkpoints, every, data, meta, hooks)

  def due(self, result) -> bool:
    return not result.rollback and (super().due(result) or result.stopping)

  def after_step(self, result) -> None:
    self.checkpoints.save(result.step, result.state, self.data(), **self.meta())
    for hook in self.hooks:
      hook.after_save(result.step)


def model_meta(model_config) -> dict:
  """The resolved model, as saved in every checkpoint's meta and compared on resume."""
  return json_safe(dataclasses.asdict(model_config))


def json_safe(x):
  """Tuples as lists, as JSON gives them back (so a saved value compares equal)."""
  if isinstance(x, dict):
    return {k: json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  return x
