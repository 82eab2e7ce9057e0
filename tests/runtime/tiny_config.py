"""A tiny pre-training config for the runtime tests: the embedded corpus, an fsdp x tensor mesh.

python -m launch.local --processes 2 --devices-per-process 4 -- python -m experiments.pretrain \
    --config tests/runtime/tiny_config.py --workdir /tmp/tiny
"""

from tests.helpers import tiny_run_config


def get_config(arg: str | None = None):
  # One batch shape: one compile.
  return tiny_run_config(steps=6, stages=((None, 8 * 16, 16),), fsdp=4, tensor=2)
