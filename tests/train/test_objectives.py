"""A new objective is one class: cross-entropy with a per-token weight field, trained through
the real loop (checkpoints every step, exact resume) with no change to the loop."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from llama3_jax.data.batches import LM_FIELDS, Batches
from llama3_jax.data.source import SyntheticSource
from llama3_jax.objectives import Objective
from llama3_jax.optim.schedules import Stage
from llama3_jax.sharding import MeshConfig
from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from llama3_jax.train.metrics import read_metrics
from llama3_jax.train.setup import setup
from tests.helpers import tiny_run_config


class WeightedNextToken(Objective):
  """Next-token cross-entropy, each target weighted by the batch's `weights` field."""
  fields = {**LM_FIELDS, "weights": np.float32}

  def loss_sums(self, model, batch, frozen=None):
    logits_btv = model(batch["inputs"], batch["segment_ids"], batch["positions"],
                       batch.get("indices"))
    ce_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, batch["targets"])
    weight_bt = batch["weights"] * batch["loss_mask"]
    correct_bt = (logits_btv.argmax(-1) == batch["targets"]) * weight_bt
    return (ce_bt * weight_bt).sum(), weight_bt.sum(), {"accuracy": correct_bt.sum()}


class WeightedSynthetic(SyntheticSource):
  """The synthetic batches with a weight of 1, 2 or 3 per target."""
  fields = SyntheticSource.fields + ("weights",)

  def read(self, number, stage_index, stage, rows):
    batch = super().read(number, stage_index, stage, rows)
    return {**batch, "weights": (1 + batch["targets"] % 3).astype(np.float32)}


def config(steps):
  c = tiny_run_config(steps=6, stages=((None, 8 * 16, 16),))   # one batch shape: one compile
  c.train.steps = steps
  return c


def run(workdir, steps):
  cfg = config(steps)
  source = WeightedSynthetic(seed=0, vocab_size=run_config(cfg).model.resolve().vocab_size)
  return train(run_config(cfg), workdir, objective=WeightedNextToken(), source=source)


def rows(workdir):
  return [(r["step"], r["loss"], r["grad_norm"], r["accuracy"]) for r in read_metrics(workdir)]


@pytest.mark.slow
def test_weighted_objective_trains_checkpoints_and_resumes_exactly(tmp_path):
  straight = run(tmp_path / "straight", 6)
  assert straight["steps"] == 6 and rows(tmp_path / "straight")[-1][1] < rows(
      tmp_path / "straight")[0][1]
  first = config(3)
  first.train.schedule_steps = 6
  source = WeightedSynthetic(seed=0, vocab_size=512)
  train(run_config(first), tmp_path / "resumed", objective=WeightedNextToken(), source=source)
  assert run(tmp_path / "resumed", 6)["steps"] == 6
  assert rows(tmp_path / "resumed") == rows(tmp_path / "straight")   # bit for bit
  assert all(0 <= accuracy <= 1 for *_, accuracy in rows(tmp_path / "straight"))


def test_the_step_minimises_the_objectives_weighted_mean():
  model_config = run_config(config(1)).model.resolve()
  s = setup(model_config, MeshConfig(fsdp=4, tensor=2), objective=WeightedNextToken())
  state = s.init_state()
  stage = Stage(None, 8 * 16, 16)
  batches = Batches(WeightedSynthetic(0, model_config.vocab_size), s.fns.batch_sharding,
                    WeightedNextToken.fields)
  batches.set_stage(0, stage)
  batch = next(batches)
  loss, _ = s.fns.loss_and_grads(state, batch)
  host = jax.device_get(batch)
  model = nnx.merge(s.graphdef, jax.device_get(state)).model
  logits = np.asarray(model(host["inputs"], host["segment_ids"], host["positions"]))
  ce = -np.take_along_axis(jax.nn.log_softmax(logits), host["targets"][..., None], -1)[..., 0]
  weight = host["weights"] * host["loss_mask"]
  assert weight.max() == 3 and 0 < weight.sum() < 3 * weight.size
  np.testing.assert_allclose(float(loss), (ce * weight).sum() / weight.sum(), rtol=1e-5)


def test_a_source_without_the_objectives_fields_is_a_clear_error():
  with pytest.raises(ValueError, match=r"reads batch fields \['weights'\] that the data source "
                                       r"\(SyntheticSource\) does not give"):
    Batches(SyntheticSource(0, 512), None, WeightedNextToken.fields)
