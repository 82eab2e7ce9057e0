"""Llama 3 8B pre-training on one 8-GPU node (the report's recipe with 8B's peak LR).

python -m experiments.pretrain --config experiments/configs/llama3_8b.py \
    --workdir /ckpt/llama3_8b --config.train.steps=1000
"""

from llama3_jax.train.config import default_config

M = 1024 * 1024


def get_config(arg: str | None = None):
  c = default_config()
  c.model.update(size="llama3-8b", dtype="bfloat16", remat="full")
  c.mesh.fsdp, c.mesh.tensor = -1, 1
  c.sharding.fsdp_mode = "llama3"
  c.train.steps = 1_200_000
  c.train.stages = (dict(until_tokens=252 * 1000 * M, batch_tokens=4 * M, seq_len=4096),
                    dict(until_tokens=None, batch_tokens=8 * M, seq_len=8192))
  c.train.peak_lr = 3e-4
  c.train.warmup_tokens = 8000 * 4 * M
  c.train.anneal_tokens = 40 * 1000 * M
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep_period = 10_000
  c.log.every_steps = 10
  c.runtime.cpu_devices = 0
  return c
