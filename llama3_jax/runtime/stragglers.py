"""Straggler report: per-process step times, slow steps flagged with the process to blame.

    times = StepTimes()
    times.add(step, step_s, host_s)                   # every process, every step
    flags = times.report(factor=3.0)                  # all processes together, at log steps

In a synchronous job one slow process slows every process: the others wait for it inside the
step's collectives, so every process sees the same long step. What differs is where the time
went: `host_s` is the part of the step a process spent on its own work before it could enter
the step (input, host code, a stall). A step is slow when a process's step time exceeds
`factor` x the median step time of the last `history` steps (all processes); it is blamed on
the processes
whose own host time was also abnormal, or on none ("device or network") when no host stood out.
Llama 3 built the same kind of tool to find the few slow GPUs among 16K (report §3.3.4).
"""

import json
import logging

import numpy as np

from llama3_jax.runtime.hooks import Hook

log = logging.getLogger(__name__)


class Stragglers(Hook):
  """The training loop's straggler report: step times of steps that did not compile, flagged
  at logging steps (a collective); process 0 warns and appends to WORKDIR/stragglers.jsonl."""

  def __init__(self, factor: float, workdir, primary: bool):
    self.factor, self.path, self.primary = factor, workdir / "stragglers.jsonl", primary
    self.times, self.count = StepTimes(), 0

  def after_step(self, result) -> None:
    if not result.compiled:
      self.times.add(result.step, result.step_s, result.host_s)

  def log_fields(self, result) -> dict:
    flags = self.times.report(self.factor)   # all processes together
    self.count += len(flags)
    if self.primary and flags:
      for flag_ in flags:
        log.warning(describe(flag_))
      with open(self.path, "a") as out:
        out.writelines(json.dumps(flag_) + "\n" for flag_ in flags)
    return {"straggler_steps": self.count}


class StepTimes:

  def __init__(self, history: int = 100):
    self._rows = []   # (step, step_s, host_s) since the last report
    self._history = history
    self._recent = None   # [processes, <= history, 3]: the medians' reference

  def add(self, step: int, step_s: float, host_s: float) -> None:
    self._rows.append((step, step_s, host_s))

  def report(self, factor: float) -> list[dict]:
    """Flags of the window's slow steps (collective: every process calls it at the same step)."""
    local = np.array(self._rows, np.float64).reshape(-1, 3)
    self._rows = []
    import jax
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      times = np.asarray(multihost_utils.process_allgather(local))   # [P, W, 3]
    else:
      times = local[None]
    recent = times if self._recent is None else np.concatenate([self._recent, times], axis=1)
    self._recent = recent[:, -self._history:]
    if self._recent.shape[1] < 3:   # no median worth the name yet
      return []
    return flag(times, factor, reference=self._recent)


def flag(times: np.ndarray, factor: float, reference: np.ndarray | None = None) -> list[dict]:
  """Slow steps of a [processes, steps, (step, step_s, host_s)] window; the medians are those
  of `reference` (default: the window)."""
  if times.size == 0 or factor <= 0:
    return []
  reference = times if reference is None else reference
  step_s, host_s = times[..., 1], times[..., 2]
  median, host_median = float(np.median(reference[..., 1])), float(np.median(reference[..., 2]))
  flags = []
  for w in range(times.shape[1]):
    slow = [p for p in range(times.shape[0]) if step_s[p, w] > factor * median]
    if not slow:
      continue
    # A host whose own work at this step explains most of the delay made the others wait.
    fastest = host_s[:, w].min()
    late = [p for p in range(times.shape[0])
            if host_s[p, w] > factor * max(host_median, 1e-3)
            and host_s[p, w] - fastest > 0.5 * (step_s[:, w].max() - median)]
    flags.append({"step": int(times[0, w, 0]), "processes": late,
                  "step_s": float(step_s[:, w].max()), "median_s": median,
                  "ratio": float(step_s[:, w].max() / median) if median else float("inf"),
                  "host_s": [float(h) for h in host_s[:, w]]})
  return flags


def describe(flag_: dict) -> str:
  blame = (f"process {', '.join(map(str, flag_['processes']))} (own host time "
           + ", ".join(f"{flag_['host_s'][p]:.2f} s" for p in flag_["processes"])
           + "; the others waited)" if flag_["processes"]
           else "no process stood out on the host: device or network")
  return (f"straggler: step {flag_['step']} took {flag_['step_s']:.2f} s, "
          f"{flag_['ratio']:.1f}x the median {flag_['median_s']:.2f} s; {blame}")
