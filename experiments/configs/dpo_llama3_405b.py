"""Llama 3 405B DPO (report §4.1.4: lr 1e-5, beta 0.1, NLL weight 0.2) on Meta's pre-training
layout: tensor 8 x stage 16 x fsdp 128 (16,384 H100s), the frozen reference beside the policy.

python -m experiments.dpo --config experiments/configs/dpo_llama3_405b.py --dry-run
python -m experiments.dpo --config experiments/configs/dpo_llama3_405b.py \
    --config.init.path=/ckpt/sft_405b --config.data.path=/data/prefs.jsonl --workdir /ckpt/dpo

The 405B model is post-trained at the scale it was pre-trained on (experiments/configs/
llama3_405b.py's mesh, interleaved pipeline and sequence parallelism). The starting model is
read straight onto that layout twice over, as the policy and as the reference (forward only, in
the same step). 16M tokens per step, 16 micro-batches of one 8,192-token row per FSDP replica.
Dry run on 16,384 x H100 (2026-12-08): the policy's step 29.3 GiB per GPU (full remat), the
reference 7.75 GiB more (its parameters 0.09, its weights gathered in bf16 as the policy's 7.66)
= 37.1 GiB: fits; MFU 27.6%.
"""

import ml_collections

from experiments.configs import dpo, llama3_405b

M = 1024 * 1024


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = dpo.get_config()
  layout = llama3_405b.get_config("final")
  c.model, c.mesh, c.sharding = layout.model, layout.mesh, layout.sharding
  c.model.remat = "full"   # the reference's weights leave no room for selective remat's 72 GiB
  c.init.path = ""   # set: --config.init.path=/ckpt/sft_405b
  c.train.micro_batches = layout.train.micro_batches
  c.train.stages = (dict(until_tokens=None, batch_tokens=16 * M, seq_len=8192, mixture=None),)
  c.train.steps = 2000
  c.train.peak_lr = 1e-5
  c.train.warmup_fraction, c.train.warmup_tokens = 0.03, None
  c.dpo.beta, c.dpo.nll_weight = 0.1, 0.2
  c.checkpoint.every_steps = 100
  c.runtime.cpu_devices = 0
  return c
