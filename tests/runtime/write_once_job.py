"""A two-process job for tests/runtime/test_job.py: process 0 writes a file the other reads,
then fails while writing a second one, which the other must not wait for forever.

python -m launch.local --processes 2 --devices-per-process 1 -- \
    python -m tests.runtime.write_once_job OUT_DIR
"""

import pathlib
import sys

from llama3_jax import cli
from llama3_jax.errors import UserError


def main(argv):
  from experiments._defaults import start_job
  start_job(compilation_cache=False)
  from llama3_jax.runtime import job
  out = pathlib.Path(argv[0])

  def write():
    with open(out / "written.txt", "a") as f:   # appended: a second writer would show
      f.write("once\n")
  job.write_once("written.txt", write)
  print(f"read: {(out / 'written.txt').read_text().strip()}", flush=True)

  def fail():
    raise UserError(f"{out / 'bad.txt'} cannot be written", "choose another place")
  job.write_once("bad.txt", fail)


if __name__ == "__main__":
  cli.run(main, argv=sys.argv[1:])
