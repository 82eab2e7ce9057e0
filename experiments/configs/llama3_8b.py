"""Llama 3 8B pre-training on one 8-GPU node (the report's recipe with 8B's peak LR).

python -m experiments.pretrain --config experiments/configs/llama3_8b.py \
    --workdir /ckpt/llama3_8b --config.train.steps=1000
"""

import dataclasses

from experiments.configs.llama3_debug import base_config
from llama3_jax.model import SIZES


def get_config(arg: str | None = None):
  c = base_config()
  c.model = dataclasses.asdict(SIZES["llama3-8b"].replace(dtype="bfloat16", remat="full"))
  c.mesh.fsdp, c.mesh.tensor = -1, 1
  c.sharding.fsdp_mode = "llama3"
  M = 1024 * 1024
  c.train.steps = 1_200_000
  c.train.stages = ((252 * 1000 * M, 4 * M, 4096), (None, 8 * M, 8192))
  c.train.peak_lr = 3e-4
  c.train.warmup_tokens = 8000 * 4 * M
  c.train.anneal_tokens = 40 * 1000 * M
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep_period = 10_000
  c.log.every_steps = 10
  c.runtime.cpu_devices = 0
  return c
