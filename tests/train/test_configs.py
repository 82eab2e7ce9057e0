"""Every shipped config loads and describes a valid model and schedule (so none can rot)."""

import importlib
import pathlib

import pytest

from llama3_jax.model import SIZES
from llama3_jax.optim.schedules import Stage, tokens_after, validate_stages
from llama3_jax.train.loop import model_config_from

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[2] / "experiments" /
                                  "configs").glob("llama3_*.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads(name):
  cfg = importlib.import_module(f"experiments.configs.{name}").get_config()
  model = model_config_from(cfg)
  execution = {name: getattr(model, name) for name in (
      "dtype", "remat", "attention", "attention_block_q", "attention_block_kv")}
  assert model in {size.replace(**execution) for size in SIZES.values()}
  stages = [Stage(*s) for s in cfg.train.stages]
  validate_stages(stages)
  assert cfg.train.warmup_tokens + cfg.train.anneal_tokens < tokens_after(
      stages, cfg.train.steps)[-1]


def test_config_names_are_the_three_sizes_and_long_context():
  assert CONFIGS == ["llama3_405b", "llama3_8b", "llama3_debug", "llama3_long_context"]
