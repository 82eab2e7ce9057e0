"""Average the parameters of saved checkpoints (Polyak / model soup), one checkpoint at a time.

    python -m experiments.average_checkpoints RUN/checkpoints/900 RUN/checkpoints/1000 --out AVG
    python -m experiments.average_checkpoints RUN_A RUN_B --out AVG     # newest of each run

Each argument is a checkpoint step directory or a run's workdir (its newest checkpoint). The
output is an Orbax checkpoint of the averaged model parameters. Exit code 2: a missing, corrupt or
mismatched checkpoint, or an --out that exists, in one line (llama3_jax/cli.py).
"""

import logging

from llama3_jax import cli
from llama3_jax.checkpoint.averaging import average_checkpoints


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("checkpoints", nargs="+")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)   # Orbax's warnings about old metadata
  count = average_checkpoints(args.checkpoints, args.out)
  print(f"averaged {count} checkpoints into {args.out}")


if __name__ == "__main__":
  cli.run(main)
