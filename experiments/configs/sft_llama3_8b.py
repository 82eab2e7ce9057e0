"""Llama 3's SFT recipe (report §4.1.3) for an 8B model: lr 1e-5, cosine, 8K rows.

python -m experiments.sft --config experiments/configs/sft_llama3_8b.py \
    --config.init.path=/ckpt/llama3-8b --config.data.path=/data/sft.jsonl --workdir /ckpt/sft
"""

import ml_collections

from experiments.configs import sft


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sft.get_config()
  c.init.path = ""
  c.mesh.fsdp, c.mesh.tensor = -1, 8
  c.train.steps = 8000
  c.train.stages = (dict(until_tokens=None, batch_tokens=512 * 8192, seq_len=8192,
                         mixture=None),)
  c.train.peak_lr = 1e-5
  c.train.warmup_fraction = 0.03
  c.checkpoint.every_steps = 500
  c.runtime.cpu_devices = 0
  return c
