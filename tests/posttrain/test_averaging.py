"""Averaging runs (report §4.1.5): the mean of their parameters, sharded, one architecture."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from llama3_jax.checkpoint.averaging import average_checkpoints, restore_params
from llama3_jax.checkpoint.model import load_model
from llama3_jax.model import new_module
from llama3_jax.checkpoint.run import model_meta
from llama3_jax.errors import UserError
from tests.posttrain.conftest import TINY


def save_run(path, config, seed, kind="lm"):
  """A checkpoint step as the loop writes it: state/ with the model, meta/metadata."""
  params = nnx.state(new_module(config, kind) if seed == 0 else _seeded(config, kind, seed))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save((path / "state").resolve(), {"model": params})
  checkpointer.wait_until_finished()
  (path / "meta").mkdir()
  (path / "meta" / "metadata").write_text(json.dumps({"model": model_meta(config),
                                                       "model_kind": kind}))
  return jax.device_get(params)


def _seeded(config, kind, seed):
  from llama3_jax.model import Transformer
  from llama3_jax.model.reward import RewardModel
  cls = RewardModel if kind == "reward" else Transformer
  return cls(config, rngs=nnx.Rngs(seed))


def test_the_average_is_the_mean_sharded_and_loads_as_a_model(tmp_path):
  runs = [save_run(tmp_path / f"run{i}", TINY, i + 1) for i in range(3)]
  average_checkpoints([tmp_path / f"run{i}" for i in range(3)], tmp_path / "avg")
  averaged = restore_params(tmp_path / "avg")
  for mean, *each in zip(jax.tree.leaves(averaged), *map(jax.tree.leaves, runs), strict=True):
    np.testing.assert_allclose(mean, np.mean([np.asarray(x) for x in each], axis=0), rtol=1e-6,
                               atol=1e-7)
  config, model = load_model(tmp_path / "avg")   # a model like a run's
  assert config == TINY and model(np.ones((1, 4), np.int32)).shape == (1, 4, TINY.vocab_size)
  # Read for averaging, the parameters were spread over the 8 devices.
  from llama3_jax.checkpoint.averaging import spread
  target = spread(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), averaged))
  leaves = jax.tree.leaves(target)
  assert any(x.sharding.shard_shape(x.shape) != x.shape for x in leaves)
  assert all(len(x.sharding.device_set) == 8 for x in leaves)


def test_reward_models_average_and_other_architectures_are_refused(tmp_path):
  save_run(tmp_path / "rm1", TINY, 1, "reward")
  save_run(tmp_path / "rm2", TINY, 2, "reward")
  average_checkpoints([tmp_path / "rm1", tmp_path / "rm2"], tmp_path / "rm_avg")
  _, rm = load_model(tmp_path / "rm_avg", kind="reward")
  assert rm.head_d.shape == (TINY.d_model,)
  save_run(tmp_path / "lm", TINY, 3)
  with pytest.raises(UserError, match="model_kind=lm"):
    average_checkpoints([tmp_path / "rm1", tmp_path / "lm"], tmp_path / "a")
  import dataclasses
  deeper = dataclasses.replace(TINY, n_layers=3)
  save_run(tmp_path / "deep", deeper, 4)
  with pytest.raises(UserError, match=r"n_layers=3 \(not 2\)"):
    average_checkpoints([tmp_path / "lm", tmp_path / "deep"], tmp_path / "a")
  assert not (tmp_path / "a").exists()
