"""What the training loop tells the parts around it: one small interface, one job per hook.

    class MyHook(Hook):
      every = 10                          # after_step at steps 10, 20, ... and the last
      def after_step(self, result): ...

The loop (llama3_jax/train/loop.py) calls every hook, on every JAX process, in the order given:
`before_step` before a step is dispatched, `dispatched` once it runs on the devices (with an
output array of it, not yet on the host), `after_step` once its metrics are on the host, at the
steps its `due` says (a hook's cadence: every `every` steps and at the last, as levanter's
`add_hook(fn, every=N)`),
`log_fields` at logging steps (fields for the metrics row; a collective may run there, since
every process calls it at the same step), `after_save` after a checkpoint save was started, and
`after_rollback` when the run went back to an earlier checkpoint. Hooks with one job each:
metrics rows and writers (train/metrics.py), evaluation (eval/during_training.py), pipeline
statistics (parallel/pipeline.py), checkpointing (checkpoint/run.py), goodput, stragglers, the
hang watchdog, the profiler and fault injection (runtime/).
"""

import dataclasses

import numpy as np

from llama3_jax.optim.schedules import Stage


@dataclasses.dataclass(frozen=True)
class StepResult:
  step: int                        # steps done (1-based: the step that just finished)
  stage: Stage
  values: dict[str, np.ndarray]    # the step's metrics, on the host
  compiled: bool                   # the step compiled (a new batch shape)
  skipped: bool                    # its update was refused as non-finite
  step_s: float                    # wall time of the step, host work included
  host_s: float                    # the part spent on the host before the step was dispatched
  last: bool = False               # the run's last step
  state: object = None             # the train state after the step (read it; never keep it)
  rollback: bool = False           # the guard rolls the run back after this step
  stopping: bool = False           # the job was asked to stop: this is its last step


class Hook:
  """No-op defaults: a hook overrides what it needs."""
  every: int = 1   # after_step at the multiples of `every` and at the last step; 0: never

  def due(self, result: StepResult) -> bool:
    """Whether `after_step` runs for this step."""
    return bool(self.every) and (result.step % self.every == 0 or result.last)

  def before_step(self, step: int, compiles: bool) -> None:
    """Step `step` (1-based) is about to run; `compiles`: a new batch shape."""

  def dispatched(self, output) -> None:
    pass

  def after_step(self, result: StepResult) -> None:
    pass

  def log_fields(self, result: StepResult) -> dict:
    return {}

  def after_save(self, step: int) -> None:
    pass

  def after_rollback(self, step: int) -> None:
    pass
