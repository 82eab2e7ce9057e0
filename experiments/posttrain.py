"""Llama 3's post-training rounds (report §4.1-4.2), end to end on the shipped task.

python -m experiments.posttrain                          # 2 rounds, ~15-20 minutes on 2 cores
python -m experiments.posttrain --config experiments/configs/posttrain.py \
    --config.rounds=3 --config.rejection.samples=8 --workdir /tmp/rounds
python -m benchmarks.posttrain_rounds workdirs/posttrain # the run's table in markdown

With no arguments it starts from workdirs/pretrain (the default pre-training run, trained first
if absent), trains round 0's SFT policy, then runs rounds of reward model -> rejection sampling
-> SFT -> DPO (llama3_jax/posttrain/rounds.py), each round's data and models in
WORKDIR/round_<i>/, and prints a table per round: the reward model's held-out pairwise accuracy,
its within-prompt AUC on the policy's own K samples, the share of rejection-sampled answers
that are correct (best of K vs a random one of the K, and best - random paired by question
with its 95% interval), and the policy's held-out exact match with its 95% interval. Ends by
writing WORKDIR/summary.json. Run it again after a crash (or SIGKILL): finished stages are not redone,
an interrupted one resumes. Under launch.local, SLURM or Kubernetes every process runs this same
command (one job; process 0 writes and prints). Exit codes: 0 done, 2 bad config or data.
"""

import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = str(pathlib.Path(__file__).parent / "configs" / "posttrain.py")


def define():
  config_flags.DEFINE_config_file("config", _CONFIG, "ml_collections config file")
  flags.DEFINE_string("workdir", "workdirs/posttrain", "rounds, their data and models")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  from experiments._defaults import PRETRAIN, ensure_pretrained, start_jax
  start_jax(cfg.sft)   # before JAX's backend starts; joins a multi-process job
  from llama3_jax.posttrain.rounds import RoundsStopped, rounds_config, run_rounds, table
  from llama3_jax.runtime import job
  config = rounds_config(cfg)   # the one conversion: every field and stage checked first
  if config.init_path == str(PRETRAIN):
    ensure_pretrained(config.init_path)
  try:
    rounds = run_rounds(config, workdir)
  except RoundsStopped as stopped:   # a preemption: the stage's checkpoint is saved; exit 0
    job.say(stopped)
    return
  job.say(table(rounds))
  job.say(f"done: {len(rounds)} rounds; outputs in {workdir} (round_<i>/, summary.json)")


if __name__ == "__main__":
  from llama3_jax import cli
  cli.run_absl(main, define=define)
