"""The JAX profiler over a range of steps (`--config.profile.steps=a,b`: steps a..b, 1-based)."""

import jax

from llama3_jax.runtime.hooks import Hook


class Profiler(Hook):

  def __init__(self, steps: str, directory):
    self.steps = [int(s) for s in str(steps).split(",") if s.strip()]
    self.directory = str(directory)

  def before_step(self, step: int, compiles: bool) -> None:
    if self.steps and step == self.steps[0] + 1:
      jax.profiler.start_trace(self.directory)

  def after_step(self, result) -> None:
    if self.steps and result.step == self.steps[-1]:
      jax.profiler.stop_trace()
