"""SIGTERM / SIGINT: ask the training loop to checkpoint and exit cleanly at a step boundary.

    with StopRequest() as stop:
      for step in ...:
        ...
        if stop.requested(step): save(); break

Cluster schedulers send SIGTERM before they kill a job (SLURM `--signal`, Kubernetes'
termination grace period, `launch.local` forwarding its own SIGTERM); saving then loses nothing.
With several processes, all must stop after the same step, or the ones still training wait
forever in a collective: JAX's preemption notifier (started by `jax.distributed.initialize`)
catches SIGTERM on any process and `reached_preemption_sync_point` agrees on the step.
"""

import signal

import jax


class StopRequest:

  def __init__(self):
    self.signal = None
    self._previous = {}
    self._distributed = jax.process_count() > 1

  def __enter__(self):
    # Several processes: SIGTERM is JAX's (a Python handler would replace its notifier's), and
    # a SIGINT reaching one process alone could not be agreed on: launchers send SIGTERM.
    for sig in () if self._distributed else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signal = signal.Signals(signum).name

  def requested(self, step: int) -> str | None:
    """The name of the signal that asks every process to stop after `step`, or None."""
    if self._distributed:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal = "SIGTERM"
    return self.signal

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
