"""Every shipped config loads into the typed schema, describes a valid model and schedule, and
plans a short run; the schema has one default per field and refuses what it does not know."""

import importlib
import logging
import pathlib

import jax
import optax
import pytest
from jax.sharding import PartitionSpec

from llama3_jax.errors import UserError
from llama3_jax.model import SIZES
from llama3_jax.parallel.pipeline import Schedule
from llama3_jax.sharding import make_rules, state_specs
from llama3_jax.train.config import RunConfig, default_config, run_config
from llama3_jax.train.plan import make_plan
from llama3_jax.train.setup import abstract_train_state

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[2] / "experiments" /
                                  "configs").glob("llama3_*.py"))
# Devices each shipped config's mesh is planned on (405B: the report's 16K GPUs; 70B: 16 nodes).
DEVICES = {"llama3_405b": 16 * 1024, "llama3_405b_128k": 16 * 1024, "llama3_70b": 128}


def load(name, **train):
  cfg = importlib.import_module(f"experiments.configs.{name}").get_config()
  cfg.train.update(train)
  return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads(name):
  run = run_config(load(name))
  model = run.model.resolve()
  execution = {name: getattr(model, name) for name in (
      "dtype", "remat", "fused_matmuls", "attention", "attention_block_q",
      "attention_block_kv")}
  assert model in {size.replace(**execution) for size in SIZES.values()}
  plan = make_plan(run, DEVICES.get(name, 8))
  assert plan.warmup_tokens + plan.anneal_tokens < plan.tokens[-1]
  if name == "llama3_405b":   # 126 layers on 16 stages; 1,024 rows do not split 2,048 ways
    assert Schedule(16, 1, 1, model.n_layers).layers_per_stage == [7] + [8] * 14 + [7]
    assert not plan.sharding.rows_over_stage


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("name", CONFIGS)
def test_short_runs_plan_on_every_config(name, steps):
  plan = make_plan(run_config(load(name, steps=steps)), DEVICES.get(name, 8))
  assert len(plan.tokens) == steps + 1
  assert 0 < plan.warmup_tokens + plan.anneal_tokens <= plan.tokens[-1]


def test_micro_batches_per_stage():
  """A stage may set its own micro-batches (the 405B ramp: 8 on its 1,024-row stages, 16 on the
  last); the step asks by batch shape; one shape with two counts is refused."""
  plan = make_plan(run_config(load("llama3_405b")), DEVICES["llama3_405b"])
  assert plan.micro_batches == (8, 8, 16)
  assert [plan.micro_batches_for(s.batch_size, s.seq_len) for s in plan.stages] == [8, 8, 16]
  cfg = load("llama3_debug")
  first, second = cfg.train.stages
  cfg.train.stages = ({**first, "micro_batches": 2}, {**second, "batch_tokens": 16 * 128,
                                                      "seq_len": 128})
  with pytest.raises(UserError, match=r"stages\[0\] and \[1\] have the same batch shape"):
    make_plan(run_config(cfg), 8)


def test_too_long_warmup_is_scaled_with_a_warning_naming_the_fix(caplog):
  cfg = load("llama3_debug", steps=4)
  with caplog.at_level(logging.WARNING):
    plan = make_plan(run_config(cfg), 8)
  assert plan.tokens[-1] == 4 * 2048
  assert (plan.warmup_tokens, plan.anneal_tokens) == (1170, 2925)   # 16384 : 40960, half the run
  assert "train.warmup_fraction" in caplog.text and "scaled to 1170 and 2925" in caplog.text


def test_fractions_of_the_schedule():
  cfg = load("llama3_debug", warmup_tokens=None, anneal_tokens=None, warmup_fraction=0.1,
             anneal_fraction=0.2)
  plan = make_plan(run_config(cfg), 8)
  assert plan.warmup_tokens == round(0.1 * plan.tokens[-1])
  assert plan.anneal_tokens == round(0.2 * plan.tokens[-1])
  cfg.train.update(warmup_fraction=0.6, anneal_fraction=0.5)
  with pytest.raises(ValueError, match="add up to less than the whole schedule"):
    make_plan(run_config(cfg), 8)
  cfg.train.update(warmup_tokens=100)
  with pytest.raises(ValueError, match="warmup_tokens=100 and train.warmup_fraction=0.6 are "
                                       "both set"):
    run_config(cfg)


def test_defaults_come_from_the_schema_once():
  cfg = default_config()
  run = run_config(cfg)
  assert run == RunConfig()
  assert cfg.runtime.watchdog_s == RunConfig().runtime.watchdog_s == 600.0
  assert cfg.resilience.spike_margin == RunConfig().resilience.spike_margin == 0.5
  assert cfg.train.schedule_steps is None and cfg.checkpoint.keep_period is None
  cfg.train.schedule_steps = 400   # an unset field is still typed for the command line
  assert run_config(cfg).train.schedule_steps == 400
  assert cfg.train.stages[0] == {"until_tokens": 65536, "batch_tokens": 2048, "seq_len": 128,
                                 "mixture": None, "micro_batches": None}


def test_the_model_is_a_size_plus_overrides():
  cfg = default_config()
  assert run_config(cfg).model.resolve() == SIZES["debug"]
  cfg.model.update(size="llama3-8b", n_layers=4, dtype="bfloat16")
  assert run_config(cfg).model.resolve() == SIZES["llama3-8b"].replace(n_layers=4,
                                                                       dtype="bfloat16")
  cfg.model.size = "debug-long"
  cfg.model.rope_scaling.factor = 4.0
  rope = run_config(cfg).model.resolve().rope_scaling
  assert (rope.factor, rope.original_max_position) == (4.0, 512)
  cfg.model.size = "llama-9000"
  with pytest.raises(ValueError, match="model.size='llama-9000' is not a known size"):
    run_config(cfg).model.resolve()


@pytest.mark.parametrize("section, field, value, message", [
    ("train", "peak_lr", -1.0, "train.peak_lr=-1.0 must be positive"),
    ("train", "steps", 0, "train.steps=0"),
    ("train", "b2", 1.5, r"train.b2=1.5 must be in \[0, 1\)"),
    ("sharding", "vocab_over_fsdp", "maybe", "use auto, True or False"),
])
def test_bad_values_are_clear_errors(section, field, value, message):
  cfg = default_config()
  cfg[section][field] = value
  with pytest.raises(ValueError, match=message):
    run_config(cfg)


def test_unknown_fields_and_positional_stages_are_refused():
  with pytest.raises(ValueError, match="unknown field"):
    run_config({**default_config().to_dict(), "train": {"stepz": 3}})
  cfg = default_config()
  cfg.train.stages = ((None, 2048, 256),)
  with pytest.raises(ValueError, match=r"positional; write it as dict\(until_tokens="):
    run_config(cfg)


def test_config_names_are_the_sizes_and_long_context():
  assert CONFIGS == ["llama3_405b", "llama3_405b_128k", "llama3_70b", "llama3_8b",
                     "llama3_debug", "llama3_long_context"]


def test_405b_layers_split_over_every_device():
  """The 126-layer stack on tensor 8 x stage 16 x fsdp 128, abstract (nothing allocated): every
  block weight splits over stage (along d_model: the layers do not divide the stages)."""
  model = SIZES["llama3-405b"]
  sizes = {"data": 1, "fsdp": 128, "stage": 16, "context": 1, "tensor": 8}
  _, state, _ = abstract_train_state(model, optax.adamw(1e-4))
  specs = state_specs(state["model"]["blocks"], make_rules(model, sizes))
  for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)):
    assert spec[0] is None and ("fsdp", "stage") in spec, spec
