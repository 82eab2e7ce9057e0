"""Per-process logs: every process writes WORKDIR/logs/process_<i>.log; process 0 also talks.

    with process_log(workdir) as path:   # inside train(); `path` is this process's log file
      ...

On a 1,000-host job one console full of identical lines helps no one, but the log of the host
that failed is what an engineer opens first (and where the hang watchdog dumps stacks), so each
process keeps its own file and the console shows process 0, plus warnings from everyone.
"""

import contextlib
import logging
import pathlib

import jax

_FORMAT = "%(asctime)s p{process} %(levelname).1s %(name)s: %(message)s"


def log_path(workdir, process: int | None = None) -> pathlib.Path:
  process = jax.process_index() if process is None else process
  return pathlib.Path(workdir) / "logs" / f"process_{process}.log"


@contextlib.contextmanager
def process_log(workdir):
  """Copies this process's log records to its file, DEBUG up (one line per step); consoles
  show INFO up on process 0 and WARNING up elsewhere."""
  path = log_path(workdir)
  path.parent.mkdir(parents=True, exist_ok=True)
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter(_FORMAT.format(process=jax.process_index())))
  root, ours = logging.getLogger(), logging.getLogger("llama3_jax")
  previous_level = ours.level
  console_level = logging.INFO if jax.process_index() == 0 else logging.WARNING
  consoles = [(h, h.level) for h in root.handlers if not isinstance(h, logging.FileHandler)]
  for console, level in consoles:
    console.setLevel(max(level, console_level))
  root.addHandler(handler)
  ours.setLevel(logging.DEBUG)
  try:
    yield path
  finally:
    root.removeHandler(handler)
    handler.close()
    ours.setLevel(previous_level)
    for console, level in consoles:
      console.setLevel(level)
