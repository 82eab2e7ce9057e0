"""Supervised fine-tuning of the default pre-training run on the shipped arithmetic task.

python -m experiments.sft                                        # this config, a few minutes
python -m experiments.sft --config experiments/configs/sft.py \
    --config.init.path=workdirs/pretrain --config.data.path=my_chats.jsonl --workdir /tmp/sft

The model is the starting run's (model.size="init"); the loss is next-token cross-entropy on
the assistant's tokens only, normalised over the whole batch (llama3_jax/posttrain/). Llama 3's
own recipe (lr 1e-5, cosine) is experiments/configs/sft_llama3_8b.py; a model this small learns
in a few hundred steps only at a larger rate.
"""

import ml_collections

from llama3_jax.train.config import apply_args, default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default_config()
  c.model.size = "init"
  c.init.path = "workdirs/pretrain"
  c.mesh.fsdp, c.mesh.tensor = 4, 2
  c.train.steps = 600
  # One stage: rows of 128 tokens, each packing several whole conversations.
  c.train.stages = (dict(until_tokens=None, batch_tokens=16 * 128, seq_len=128, mixture=None),)
  c.train.peak_lr = 1e-3
  c.train.warmup_fraction, c.train.warmup_tokens = 0.05, None
  c.train.anneal_tokens = 0   # cosine to the floor, no checkpoint averaging
  c.train.floor_ratio = 0.1
  c.checkpoint.every_steps = 80
  c.log.every_steps = 20
  return apply_args(c, arg, {"steps": "train.steps"})
