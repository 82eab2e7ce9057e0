"""Llama 3's DPO recipe (report §4.1.4) for an 8B model: lr 1e-5, beta 0.1, NLL weight 0.2.

The layout of sft_llama3_8b.py; dry run on 8 x H100 (2026-12-08): 54.0 GiB for the policy +
6.2 GiB for the frozen reference = 60.2 GiB per GPU, fits.

python -m experiments.dpo --config experiments/configs/dpo_llama3_8b.py --dry-run
python -m experiments.dpo --config experiments/configs/dpo_llama3_8b.py \
    --config.init.path=/ckpt/sft --config.data.path=/data/prefs.jsonl --workdir /ckpt/dpo
"""

import ml_collections

from experiments.configs import sft_llama3_8b


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sft_llama3_8b.get_config()
  c.train.steps = 2000
  c.train.peak_lr = 1e-5
  c.dpo.beta, c.dpo.nll_weight = 0.1, 0.2
  return c
