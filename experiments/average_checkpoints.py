"""Average the parameters of saved checkpoints (Polyak / model soup), one checkpoint at a time.

    python -m experiments.average_checkpoints RUN/checkpoints/900 RUN/checkpoints/1000 --out AVG
    python -m experiments.average_checkpoints RUN_A RUN_B --out AVG     # newest of each run

Each argument is a checkpoint step directory or a run's workdir (its newest checkpoint). The
output is an Orbax checkpoint of the averaged model parameters. Exit code 2: a missing, corrupt or
mismatched checkpoint, or an --out that exists, in one line (llama3_jax/cli.py).
"""

import logging

from llama3_jax import cli
from llama3_jax.errors import check_apart, with_run


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("checkpoints", nargs="+")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  # Never into a checkpoint it reads, nor its run (a new step directory would become the run's
  # newest checkpoint).
  check_apart(args.out, [i for path in args.checkpoints for i in with_run("checkpoint", path)])
  from experiments._defaults import start_job
  start_job()   # joins a multi-process job (launch.local, SLURM, Kubernetes)
  logging.getLogger("absl").setLevel(logging.ERROR)   # Orbax's warnings about old metadata
  from llama3_jax.checkpoint.averaging import average_checkpoints
  from llama3_jax.runtime import job
  count = average_checkpoints(args.checkpoints, args.out)
  job.say(f"averaged {count} checkpoints into {args.out}")


if __name__ == "__main__":
  cli.run(main)
