"""What the loop does about bad steps: non-finite updates, loss spikes, rollbacks.

    guard = Guard(GuardConfig(max_bad_steps=3, spike_margin=0.5))
    verdict = guard.check(step, loss, skipped)     # after every step, on every process alike
    if verdict.rollback: restore the newest checkpoint <= verdict.before; skip the data since

The compiled step already refuses a non-finite update (`optax.apply_if_finite` in
llama3_jax/optim/optimizer.py), so one bad batch costs one step. K in a row mean the model, not
one batch, has gone bad: the run goes back to the newest checkpoint from before the first bad
step and skips the data window that led there, as PaLM did for loss spikes (restart ~100 steps
earlier, skip 200-500 batches). A loss above the running mean of recent good steps by more
than `spike_margin` (relative) is a spike: logged, and with spike_action="skip" handled the
same way at once (the spike's update has been applied; only a rollback undoes it). Every
process sees the same global loss, so every process reaches the same verdict.
"""

import collections
import dataclasses
import logging
import math

from llama3_jax.runtime.hooks import Hook

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GuardConfig:
  """What the loop does about bad steps (the launcher config's `resilience` section)."""
  skip_nonfinite: bool = True   # the compiled step refuses non-finite updates
  max_bad_steps: int = 3        # K consecutive non-finite steps -> rollback
  max_rollbacks: int = 3        # more than this many rollbacks in one run -> give up
  spike_margin: float = 0.5     # loss > (1 + margin) * running mean is a spike; 0 = off
  spike_window: int = 20        # good steps in the running mean (and before spikes count)
  spike_action: str = "log"     # "log", or "skip": roll back and skip the spike's batches
  straggler_factor: float = 3.0  # steps slower than this x the median are reported

  def __post_init__(self):
    if self.spike_action not in ("log", "skip"):
      raise ValueError(f"resilience.spike_action={self.spike_action!r}; use 'log' or 'skip'")
    if self.max_bad_steps < 1:
      raise ValueError(f"resilience.max_bad_steps={self.max_bad_steps} must be at least 1")


@dataclasses.dataclass(frozen=True)
class Verdict:
  spike: bool = False
  rollback: bool = False
  before: int = 0               # roll back to a checkpoint at or before this step


class Diverged(RuntimeError):
  """Rollbacks did not help: a person should look (Llama 3 needed three such interventions)."""


class Guard(Hook):
  """Reaches a verdict on every step (`check`); reports its counts in the metrics rows."""

  def __init__(self, config: GuardConfig, rollbacks: int = 0):
    self.config = config
    self.rollbacks = rollbacks
    self.spikes = 0
    self._bad = []                # the current run of consecutive non-finite steps
    self._recent = collections.deque(maxlen=config.spike_window)

  def check(self, step: int, loss: float, skipped: bool) -> Verdict:
    """`step` (1-based) finished with `loss`; `skipped`: its update was refused as non-finite."""
    if skipped or not math.isfinite(loss):
      self._bad.append(step)
      log.warning("step %d: non-finite loss or gradients (loss %s); update skipped (%d in a "
                  "row, rollback at %d)", step, loss, len(self._bad), self.config.max_bad_steps)
      if len(self._bad) >= self.config.max_bad_steps:
        return self._rollback(self._bad[0] - 1, f"{len(self._bad)} non-finite steps in a row")
      return Verdict()
    self._bad.clear()
    full = len(self._recent) == self._recent.maxlen
    mean = sum(self._recent) / max(len(self._recent), 1)
    if self.config.spike_margin > 0 and full and loss > (1 + self.config.spike_margin) * mean:
      self.spikes += 1
      log.warning("step %d: loss spike, %.4f against a running mean of %.4f (margin %g)",
                  step, loss, mean, self.config.spike_margin)
      if self.config.spike_action == "skip":
        return dataclasses.replace(self._rollback(step - 1, "a loss spike"), spike=True)
      return Verdict(spike=True)
    self._recent.append(loss)
    return Verdict()

  def log_fields(self, result) -> dict:
    return {"rollbacks": self.rollbacks, "loss_spikes": self.spikes}

  def _rollback(self, before: int, why: str) -> Verdict:
    self._bad.clear()
    self.rollbacks += 1
    if self.rollbacks > self.config.max_rollbacks:
      raise Diverged(f"training diverged: {why}, after {self.config.max_rollbacks} rollbacks "
                     "already; raise resilience.max_rollbacks or lower the learning rate")
    log.warning("%s: rolling back to the newest checkpoint at or before step %d and skipping "
                "the data since (rollback %d of at most %d)", why, before, self.rollbacks,
                self.config.max_rollbacks)
    return Verdict(rollback=True, before=before)
