"""SFT, then DPO from the SFT model's Hugging Face export, then a reward model from the
pre-trained run, each a tiny stage (stage_config.py): one JAX job, run by the multi-process
tests as `python -m launch.local ... -- python -m tests.posttrain.stages_job START OUT` and in
the test's own process for one process x 8 devices."""

import pathlib
import sys

from tests.posttrain import stage_config

STAGES = (("sft", "sft.jsonl", "pretrain"), ("dpo", "preferences.jsonl", "sft/hf"),
          ("reward", "preferences.jsonl", "pretrain"))


def stage_run(kind: str, init_path, data_path):
  from llama3_jax.train.config import run_config
  cfg = stage_config.get_config(kind)
  cfg.init.path, cfg.data.path = str(init_path), str(data_path)
  return run_config(cfg)


def run_stages(start: pathlib.Path, out: pathlib.Path) -> None:
  """`start`: the pre-trained run (start/pretrain) and the task's files (start/task)."""
  from llama3_jax.posttrain.stage import run_stage
  for kind, data, init in STAGES:
    init_path = start / init if init == "pretrain" else out / init
    run_stage(stage_run(kind, init_path, start / "task" / data), out / kind, kind)


if __name__ == "__main__":
  from experiments._defaults import start_job
  start_job()
  run_stages(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
