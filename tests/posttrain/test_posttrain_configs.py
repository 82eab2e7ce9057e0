"""The shipped post-training configs load and plan, with the model their init.path would give."""

import importlib

import pytest

from llama3_jax.model import SIZES
from llama3_jax.train.config import run_config
from llama3_jax.train.plan import make_plan

# config -> (the model its starting run has, devices to plan on)
CONFIGS = {"sft": ("debug", 8), "dpo": ("debug", 8), "sft_llama3_8b": ("llama3.1-8b", 8),
           "dpo_llama3_8b": ("llama3.1-8b", 8)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("steps", [None, 2])
def test_posttrain_config_plans(name, steps):
  cfg = importlib.import_module(f"experiments.configs.{name}").get_config()
  if steps:
    cfg.train.steps = steps
  size, devices = CONFIGS[name]
  run = run_config(cfg)
  plan = make_plan(run, devices, init_model=SIZES[size])
  # the starting model's shape; the 8B recipes train it in bf16 with remat (their own fields)
  shape = lambda m: m.replace(dtype="float32", remat="none", attention="reference")
  assert shape(plan.model) == shape(SIZES[size]) and len(plan.stages) == 1
  assert plan.anneal_tokens == 0   # cosine to the floor, no checkpoint averaging
  if name.endswith("8b"):
    assert run.train.peak_lr == 1e-5   # Llama 3's recipe
  if name.startswith("dpo"):
    assert (run.dpo.beta, run.dpo.nll_weight) == (0.1, 0.2)


def test_size_init_needs_init_path():
  cfg = importlib.import_module("experiments.configs.sft").get_config()
  with pytest.raises(ValueError, match='model.size="init" takes the model of init.path'):
    make_plan(run_config(cfg), 8)
