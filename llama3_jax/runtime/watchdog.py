"""Hang watchdog: no step finished within T seconds -> dump stacks and state, exit non-zero.

    with Watchdog(timeout_s=600, compile_s=1800, log_file=path, describe=lambda: {...}) as dog:
      dog.arm(dog.compile_s)                  # a longer deadline while a step compiles
      for step in ...:
        dog.before_step(step, compiles)       # the training loop's hook calls
        ...
        dog.after_step(result)                # or dog.beat(step)

A hung collective (a dead peer, a network fault) blocks every process of the job forever; the
job must die so that the launcher restarts it from the last checkpoint. Before it dies it
writes what an engineer needs to find the culprit, our counterpart of the collective "flight
recorder" Llama 3 dumped on NCCL timeouts (report §3.3.4): every Python thread's stack
(`faulthandler`), the last finished step, per-device memory and the job's layout, to stderr
and to this process's log. Exits with EXIT_HANG (75, EX_TEMPFAIL: "try again").
"""

import faulthandler
import json
import os
import sys
import threading
import time

from llama3_jax.runtime.hooks import Hook

EXIT_HANG = 75


class Watchdog(Hook):

  def __init__(self, timeout_s: float, log_file=None, describe=None, compile_s: float = 0.0):
    self.timeout_s = timeout_s
    self.compile_s = compile_s
    self.log_file = log_file
    self.describe = describe or (lambda: {})
    self.step = None
    self.in_progress = None     # the step running now (1-based)
    self.in_flight = None       # an output of it once dispatched (is it done on the device?)
    self._deadline = None
    self._wake = threading.Event()
    self._thread = None

  def __enter__(self):
    if self.timeout_s > 0:
      self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._deadline = None
    self._wake.set()
    if self._thread:
      self._thread.join()

  def arm(self, seconds: float | None = None) -> None:
    """The next step must finish within `seconds` (default: the timeout)."""
    if self.timeout_s > 0:
      self._deadline = time.monotonic() + max(seconds or 0, self.timeout_s)

  def beat(self, step: int, next_s: float | None = None) -> None:
    """Step `step` finished; the next one has `next_s` (default: the timeout) to finish."""
    self.step = step
    self.arm(next_s)

  def before_step(self, step: int, compiles: bool) -> None:
    self.in_progress, self.in_flight = step, None
    if compiles:   # a new batch shape compiles: more time
      self.arm(self.compile_s)

  def dispatched(self, output) -> None:
    """The running step is on the devices; `output` tells whether they have finished it."""
    self.in_flight = output

  def after_step(self, result) -> None:
    self.beat(result.step)

  def state(self) -> dict:
    """Where the step stands. A step dispatched but not done on the device points at a
    collective (a peer that never joined it); a step never dispatched, at this host."""
    ready = getattr(self.in_flight, "is_ready", None)
    return {"step_in_progress": self.in_progress, "step_dispatched": self.in_flight is not None,
            "step_done_on_device": ready() if ready else None}

  def pause(self) -> None:
    """No deadline until the next `arm` or `beat` (e.g. during the final checkpoint wait)."""
    self._deadline = None

  def _watch(self) -> None:
    while not self._wake.is_set():
      deadline = self._deadline
      if deadline is not None and time.monotonic() > deadline:
        self._fire()
      self._wake.wait(min(1.0, self.timeout_s / 10))

  def _fire(self) -> None:
    header = (f"\nHANG: no training step finished within {self.timeout_s:g} s (last finished "
              f"step: {self.step}); dumping all threads' stacks and device state, then exiting "
              f"with {EXIT_HANG} so that the launcher restarts the job\n")
    try:
      state = json.dumps({**self.state(), **self.describe()}, default=str, indent=1)
    except Exception as error:  # noqa: BLE001 - the dump must not die on a bad probe
      state = f"(device state unavailable: {error!r})"
    outputs = [sys.stderr]
    if self.log_file:
      outputs.append(open(self.log_file, "a"))   # noqa: SIM115 - the process exits below
    for out in outputs:
      out.write(header)
      out.flush()
      faulthandler.dump_traceback(file=out, all_threads=True)
      out.write(f"device and job state: {state}\n")
      out.flush()
    os._exit(EXIT_HANG)   # not sys.exit: the main thread is the one that hangs
