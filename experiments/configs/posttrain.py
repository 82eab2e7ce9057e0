"""Llama 3's rounds (reward model -> rejection sampling -> SFT -> DPO) on the shipped task.

python -m experiments.posttrain                      # this config: 2 rounds, ~10-15 minutes
python -m experiments.posttrain --config.rounds=3 --config.rejection.samples=16 --workdir W

Each stage is a whole training config (`sft_start`, `reward`, `sft`, `dpo`: the launchers' own,
experiments/configs/{sft,reward_model,dpo}.py), so any field can be set, e.g.
`--config.reward.train.steps=600`. Llama 3 used K = 10-30 samples per prompt and six rounds;
the defaults are sized for a 2-core CPU. The reward models start from the pre-trained model
(as Llama 3's do); each round's SFT continues from the previous round's policy
(`sft_init="previous"`; `"pretrained"` restarts from the pre-trained model each round, as Llama
3 does with its far larger SFT sets, and here mostly relearns round 0).
"""

import ml_collections

from experiments.configs import dpo, reward_model, sft
from llama3_jax.train.config import apply_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.rounds = 2
  c.init_path = "workdirs/pretrain"   # the pre-trained model (trained first if absent)
  c.start_policy = ""   # a policy to sample from in round 1; "": round 0 trains one (SFT)
  c.sft_init = "previous"
  c.task = ml_collections.ConfigDict(dict(seed=0, heldout=200))   # the shipped task's files
  c.rejection = ml_collections.ConfigDict(dict(
      prompts=400, samples=8, temperature=0.8, top_p=0.95, seed=0, max_new_tokens=8))
  c.sft_start = sft.get_config()             # round 0: 600 steps
  c.reward = reward_model.get_config()       # 1,200 steps at 1e-3
  c.sft = sft.get_config("steps=200")
  c.sft.train.peak_lr = 3e-4
  c.dpo = dpo.get_config()                   # 120 steps at 3e-4
  return apply_args(c, arg, {"rounds": "rounds"})
