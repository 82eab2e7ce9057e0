"""Goodput: the share of the job's wall-clock time spent in steps that count.

    python -m llama3_jax.runtime.goodput WORKDIR      # the breakdown of a run, restarts included

Llama 3's 54-day run kept "effective training time" above 90% through 466 interruptions (report
§3.3.4). The same figure here: process 0 appends the timeline of every attempt of the job to
WORKDIR/goodput.jsonl, as contiguous laps, so the parts add up to the wall time by
construction:
  startup     process start -> state built (imports, jax.distributed, mesh, initialisation)
  restore     reading the checkpoint a run resumes from (or rolls back to)
  compile     steps that compiled (the first of each batch shape)
  productive  steps whose result the final model keeps (input, compute, logging)
  checkpoint  the blocking part of checkpoint saves, and the final wait for them
  lost        steps computed and then thrown away: after the last checkpoint of an attempt
              that died, or rolled back
  skipped     steps whose update was refused as non-finite
  restart     from an attempt's last record to the next attempt's process start (the
              unrecorded part of the failed step, the failure's detection, the restart)
  other       the end of a run (plots, the averaged parameters)
goodput = productive / wall, wall = the first attempt's start -> the last record.
"""

import array
import collections
import json
import pathlib
import sys
import time

from llama3_jax.runtime.hooks import Hook

CATEGORIES = ("startup", "restore", "compile", "productive", "checkpoint", "lost", "skipped",
              "restart", "other")


class Timeline:
  """The categories of a goodput.jsonl, replayed event by event."""

  def __init__(self):
    self.totals = collections.defaultdict(float)
    self.steps = array.array("d")        # productive seconds of each kept step, by number
    self.first_t = self.last_t = None
    self.attempts = 0

  @classmethod
  def read(cls, path) -> "Timeline":
    timeline = cls()
    path = pathlib.Path(path)
    if path.exists():
      for line in path.read_text().splitlines():
        if line.strip():
          timeline.apply(json.loads(line))
    return timeline

  def apply(self, event: dict) -> None:
    kind = event["kind"]
    if kind == "start":
      self.attempts += 1
      if self.last_t is not None:
        self.totals["restart"] += max(event["t"] - self.last_t, 0.0)
      self.first_t = event["t"] if self.first_t is None else self.first_t
      self.last_t = event["t"]
      return
    if kind in ("resume", "rollback"):   # markers, no time of their own
      self._lose_after(event["step"])
      return
    if kind == "step":
      step = event["step"]
      self._lose_after(step - 1)   # a step done again without a marker: the first is lost
      while len(self.steps) <= step:
        self.steps.append(0.0)
      self.steps[step] = event["s"]
    else:
      self.totals[kind] += event["s"]
    self.last_t = event["t"]

  def _lose_after(self, step: int) -> None:
    first = max(step + 1, 0)
    self.totals["lost"] += sum(self.steps[first:])
    del self.steps[first:]

  def summary(self) -> dict:
    """Seconds per category (`<name>_s`), `wall_s`, `goodput` = productive / wall, attempts."""
    if self.first_t is None:
      return {}
    seconds = {name: self.totals.get(name, 0.0) for name in CATEGORIES}
    seconds["productive"] = sum(self.steps)
    wall = self.last_t - self.first_t
    seconds["other"] += wall - sum(seconds.values())   # rounding only: laps tile the timeline
    out = {f"{name}_s": value for name, value in seconds.items()}
    out.update(wall_s=wall, goodput=seconds["productive"] / wall if wall > 0 else 0.0,
               attempts=self.attempts)
    return out


class Goodput(Hook):
  """Records this attempt's laps (process 0 only: elsewhere `enabled` is False, a no-op).

  As a hook of the training loop it laps each step (compile, skipped or productive), each
  checkpoint save and each rollback; the loop laps start-up and restore itself.
  """

  def __init__(self, workdir, started_at: float, enabled: bool = True):
    self.path = pathlib.Path(workdir) / "goodput.jsonl"
    self.enabled = enabled
    self.timeline = Timeline.read(self.path) if enabled else Timeline()
    self._file = self.path.open("a") if enabled else None
    self._record({"kind": "start", "t": started_at})

  def lap(self, kind: str, **fields) -> None:
    """Everything since the previous lap was `kind` (with `step` for step laps)."""
    if self.enabled:
      now = time.time()
      self._record({"kind": kind, "t": now, "s": now - self.timeline.last_t, **fields})

  def resume(self, step: int, kind: str = "resume") -> None:
    """The run continues after checkpoint `step` (0: from scratch): later steps are lost."""
    self._record({"kind": kind, "t": time.time(), "step": step})

  def summary(self) -> dict:
    return self.timeline.summary()

  def after_step(self, result) -> None:
    self.lap("compile" if result.compiled else "skipped" if result.skipped else "step",
             step=result.step)

  def log_fields(self, result) -> dict:
    return {"goodput": self.summary().get("goodput", 0.0)} if self.enabled else {}

  def after_save(self, step: int) -> None:
    self.lap("checkpoint")

  def after_rollback(self, step: int) -> None:
    self.lap("restore")
    self.resume(step, "rollback")

  def close(self) -> None:
    if self._file:
      self._file.close()

  def _record(self, event: dict) -> None:
    if self.enabled:
      self.timeline.apply(event)
      self._file.write(json.dumps(event) + "\n")
      self._file.flush()   # a SIGKILL loses nothing already lapped


def report(summary: dict) -> str:
  """One line: goodput and where the rest of the time went."""
  parts = [f"{name} {summary[name + '_s']:.1f} s" for name in CATEGORIES
           if summary[name + "_s"] >= 0.05]
  return (f"goodput {summary['goodput']:.1%} of {summary['wall_s']:.1f} s over "
          f"{summary['attempts']} attempt(s): " + ", ".join(parts))


def main(argv) -> None:
  if len(argv) != 2:
    sys.exit("usage: python -m llama3_jax.runtime.goodput WORKDIR")
  path = pathlib.Path(argv[1]) / "goodput.jsonl"
  if not path.exists():
    sys.exit(f"error: {path} does not exist; is {argv[1]} a training workdir?")
  summary = Timeline.read(path).summary()
  print(report(summary))
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main(sys.argv)
