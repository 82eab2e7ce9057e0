"""Llama 3's rounds (reward model -> rejection sampling -> SFT -> DPO) on the shipped task.

python -m experiments.posttrain                      # this config: 2 rounds, ~25 minutes
python -m experiments.posttrain --config.rounds=3 --config.rejection.samples=8 --workdir W

Each stage is a whole training config (`sft_start`, `reward`, `sft`, `dpo`: the launchers' own,
experiments/configs/{sft,reward_model,dpo}.py), so any field can be set, e.g.
`--config.reward.train.steps=600`. Llama 3 used K = 10-30 samples per prompt and six rounds;
the defaults are sized for a 2-core CPU. The reward models start from the pre-trained model
(as Llama 3's do); each round's SFT continues from the previous round's policy
(`sft_init="previous"`; `"pretrained"` restarts from the pre-trained model each round, as Llama
3 does with its far larger SFT sets, and here mostly relearns round 0).

Why K = 2 and 1,200 questions (measured on the default run, BENCHMARKS.md "Post-training
rounds"): the policy's mistakes are almost all off by one (89% of its wrong samples), which
no reward model this size tells from the right answer (held-out pairs with an off-by-one
answer: 0.46-0.61 for every variant tried, against 0.88-1.0 for the other near misses), so it
ranks the policy's samples with a within-prompt AUC of ~0.58. The right answer comes up many
times among K samples and must outscore every distinct wrong one, so at that AUC best of 8
loses to a random sample (-0.064), best of 4 ties (+0.004) and best of 2 wins (+0.039, the
same samples and reward model). Drawn at temperature 1.2 (top-p 1), the samples hold more of
the mistakes it does tell apart (off by one: 89% -> 70% of the wrong ones): over a whole run's
1,200 questions best of 2 beats a random one by +0.026 and +0.028 (± 0.019) in the two rounds,
against +0.015 ± 0.019 at 0.8. A small gain, the most this reward model gives.
Neither the checker's pairs of the policy's own samples (AUC 0.58 -> 0.50) nor starting the
reward model from the policy (0.57-0.58) ranked better, so by default the reward model is
Llama 3's, from the pre-trained model, on the task's pairs (`annotate=0`).
"""

import dataclasses

import ml_collections

from experiments.configs import dpo, reward_model, sft
from llama3_jax.posttrain.rounds import STAGES, RoundsConfig
from llama3_jax.train.config import apply_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # The rounds' own fields with their defaults (llama3_jax/posttrain/rounds.py: RoundsConfig),
  # then each stage's whole training config (the launchers' own).
  c = ml_collections.ConfigDict({
      f.name: dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default) else f.default
      for f in dataclasses.fields(RoundsConfig) if f.name not in STAGES})
  c.sft_start = sft.get_config()             # round 0: 600 steps
  c.reward = reward_model.get_config()       # 1,200 steps at 1e-3
  c.sft = sft.get_config("steps=200")
  c.sft.train.peak_lr = 3e-4
  c.dpo = dpo.get_config()                   # 120 steps at 3e-4
  return apply_args(c, arg, {"rounds": "rounds"})
