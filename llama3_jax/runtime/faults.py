"""Fault injection for tests and drills: the failures a 16K-GPU job meets, on demand.

Set in the config's `faults` section (all empty by default, so a normal run never sees them):

    faults.nan_batches = "3,4"          # batches 3 and 4 (1-based) poison the loss with NaN
    faults.kill = "4:during:p1"         # SIGKILL process 1 while step 4's checkpoint is written
    faults.sleep = "5:30:p0"            # process 0 sleeps 30 s before step 5 (a hang, a straggler)

`kill` and `sleep` items are STEP:WHAT[:pPROCESS][:aATTEMPT], comma-separated. STEP is the step
as counted in metrics and checkpoints (1 = the first); PROCESS defaults to every process and
ATTEMPT to 0, the first run of the job (`launch.local` numbers its restarts in LLAMA3_ATTEMPT),
so a restarted job does not die again at the same place. `kill` moments: `before` (step done,
the earlier checkpoints written, its own, if it has one, not started), `during` (its
asynchronous checkpoint write under way) and `after` (written); the last two need a step that
checkpoints.

NaN reaches the compiled step honestly: the batch's `loss_mask` is multiplied by NaN, so the
loss and every gradient are NaN, as with bad data or an overflow; nothing in the step knows.
A poisoned batch is named by its position in the data, so a batch skipped after a rollback is
not poisoned again.
"""

import dataclasses
import os
import pathlib
import signal
import time

import numpy as np

from llama3_jax.runtime.hooks import Hook

MOMENTS = ("before", "during", "after")


@dataclasses.dataclass(frozen=True)
class FaultsConfig:
  """The launcher config's `faults` section; empty strings: no faults."""
  nan_batches: str = ""
  kill: str = ""
  sleep: str = ""


@dataclasses.dataclass(frozen=True)
class Fault:
  step: int
  what: str                   # a kill moment, or seconds to sleep
  process: int | None = None  # None: every process
  attempt: int = 0


def _parse(spec: str, name: str) -> list[Fault]:
  faults = []
  for item in filter(None, (s.strip() for s in str(spec or "").split(","))):
    parts = item.split(":")
    try:
      step, what, extra = int(parts[0]), parts[1], parts[2:]
      process = next((int(p[1:]) for p in extra if p.startswith("p")), None)
      attempt = next((int(p[1:]) for p in extra if p.startswith("a")), 0)
      if any(p[:1] not in ("p", "a") for p in extra):
        raise ValueError
    except (ValueError, IndexError):
      raise ValueError(f"faults.{name} item {item!r} is not STEP:WHAT[:pPROCESS][:aATTEMPT], "
                       "e.g. 4:during:p1") from None
    faults.append(Fault(step, what, process, attempt))
  return faults


class Faults(Hook):
  """The faults of a config that concern this process in this attempt of the job.

  As a training-loop hook (llama3_jax/runtime/hooks.py) it strikes at the moments the config
  names: `sleep` before the step (after the watchdog armed its deadline: the hooks before it
  in the loop's list), `kill` `before` once the step is done and not rolled back, `during` and
  `after` once its checkpoint save started (`after_save`). `checkpoints`: the checkpoint
  directory the kills watch (see `kill`).
  """

  def __init__(self, cfg: FaultsConfig | dict, process: int, attempt: int | None = None,
               checkpoints: pathlib.Path | None = None):
    cfg = cfg if isinstance(cfg, FaultsConfig) else FaultsConfig(**cfg)
    self.checkpoints, self.written = checkpoints, 0   # the newest step saved in this attempt
    attempt = int(os.environ.get("LLAMA3_ATTEMPT", 0)) if attempt is None else attempt
    mine = lambda f: f.attempt == attempt and f.process in (None, process)
    self.kills = [f for f in _parse(cfg.kill, "kill") if mine(f)]
    self.sleeps = [f for f in _parse(cfg.sleep, "sleep") if mine(f)]
    for f in self.kills:
      if f.what not in MOMENTS:
        raise ValueError(f"faults.kill moment {f.what!r} is not one of {', '.join(MOMENTS)}")
    for f in self.sleeps:
      try:
        float(f.what)
      except ValueError:
        raise ValueError(f"faults.sleep {f.what!r} is not a number of seconds") from None
    self.nan_batches = {int(b) for b in str(cfg.nan_batches).split(",") if b.strip()}

  def wrap(self, source):
    """`source` (llama3_jax/data/batches.py), its batches poisoned where `nan_batches` says."""
    return _Poisoned(source, self.nan_batches) if self.nan_batches else source

  def sleep(self, step: int) -> None:
    for f in self.sleeps:
      if f.step == step:
        time.sleep(float(f.what))

  def before_step(self, step: int, compiles: bool) -> None:
    self.sleep(step)   # an injected hang or straggler: host time before the step

  def after_step(self, result) -> None:
    if not result.rollback:   # the step done, earlier checkpoints written, its own not begun
      self.kill(result.step, "before", self.checkpoints, self.written)

  def after_save(self, step: int) -> None:
    self.kill(step, "during", self.checkpoints)   # while Orbax writes it
    self.kill(step, "after", self.checkpoints)
    self.written = step

  def after_rollback(self, step: int) -> None:
    self.written = step

  def kill(self, step: int, moment: str, checkpoints: pathlib.Path | None = None,
           written: int = 0) -> None:
    """SIGKILLs this process if a `kill` fault names this step and moment.

    `checkpoints`: the checkpoint directory, watched so that `during` strikes while Orbax's
    temporary directory of the step exists, `after` once the step's final directory does
    (with several processes, process 0 renames it when all have written) and `before` once
    the final directory of `written`, the newest step saved before, does: its write is
    asynchronous, and a kill that beat it would make the moment depend on the machine's speed.
    """
    if not any(f.step == step and f.what == moment for f in self.kills):
      return
    if checkpoints is not None and (moment != "before" or written):
      def seen():
        names = [p.name for p in checkpoints.iterdir()]
        if moment in ("before", "after"):
          return str(written if moment == "before" else step) in names
        return any(n.startswith(f"{step}.") and "tmp" in n for n in names)
      deadline = time.monotonic() + 60
      while not seen() and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)


class _Poisoned:
  """A batch source whose batches numbered in `numbers` (1-based) carry a NaN loss mask."""

  def __init__(self, source, numbers: set[int]):
    self.source, self.numbers = source, numbers

  def __getattr__(self, name):
    return getattr(self.source, name)

  def read(self, number: int, stage_index: int, stage, rows: tuple[int, int]) -> dict:
    batch = self.source.read(number, stage_index, stage, rows)
    if number in self.numbers:
      batch = {**batch, "loss_mask": batch["loss_mask"] * np.float32("nan")}
    return batch
