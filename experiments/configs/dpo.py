"""DPO of the default SFT run on the shipped task's preference pairs (correct vs near miss).

python -m experiments.dpo                                        # this config, a few minutes
python -m experiments.dpo --config.init.path=workdirs/sft --config.data.path=prefs.jsonl \
    --config.dpo.beta=0.1 --workdir /tmp/dpo

Llama 3's DPO (report §4.1.4): beta 0.1, header and end-of-turn tokens masked out of both
responses' log-probs, plus 0.2 x the chosen response's length-normalised NLL; the reference is
the starting model, frozen, run in the same step. Llama 3's learning rate (1e-5) is
experiments/configs/dpo_llama3_8b.py.

Short and gentle on purpose: `<|eot_id|>` is masked out of DPO's loss (as Llama 3 does), so
nothing in DPO keeps the model ending its turn. Measured on this task, 300 steps at 3e-4 (or
at 1e-3) still raise the chosen answers' log-probs, but the model stops ending its answers
(held-out exact match 0.31 -> 0.00, every answer running on past the number).
"""

import ml_collections

from experiments.configs import sft
from llama3_jax.train.config import apply_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sft.get_config()
  c.init.path = "workdirs/sft"
  c.train.steps = 120
  c.train.peak_lr = 3e-4
  c.checkpoint.every_steps = 40
  return apply_args(c, arg, {"steps": "train.steps", "nll_weight": "dpo.nll_weight"})
