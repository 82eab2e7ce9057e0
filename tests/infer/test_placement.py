"""Where inference runs (llama3_jax/infer/placement.py): a model put on a mesh keeps one device's
numbers in every evaluation that runs there (multiple choice, held-out loss with padded batches,
reward scores), and a model's own mesh is found from its parameters."""

import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llama3_jax.eval import multiple_choice, perplexity, tasks
from llama3_jax.infer.placement import Placement
from llama3_jax.model import RewardModel, Transformer
from llama3_jax.posttrain.reward import score_responses
from llama3_jax.sharding import MeshConfig
from tests.helpers import TINY

MESH = MeshConfig(data=2, fsdp=2, tensor=2)   # rows over data x fsdp: 4 pieces


@pytest.fixture(scope="module")
def model():
  return Transformer(TINY, rngs=nnx.Rngs(3))


def test_a_model_on_a_mesh_is_sharded_by_the_rules_and_found_again(model):
  placement = Placement.make(MESH, TINY)
  assert placement.row_axes[:2] == ("data", "fsdp") and placement.row_shards == 4
  assert [placement.padded_rows(n) for n in (1, 4, 5)] == [4, 4, 8]
  sharded = placement.put_model(model)
  embedding = sharded.embed_vd.value   # [V, D]: vocab over tensor, d_model over fsdp
  assert embedding.sharding == NamedSharding(placement.mesh, PartitionSpec("tensor", "fsdp"))
  assert model.embed_vd.value.sharding.num_devices == 1   # the original is left alone
  found = Placement.of(sharded)
  assert found.mesh == placement.mesh and found.row_shards == 4
  assert Placement.of(model).mesh is None and Placement().padded_rows(5) == 5
  rows = placement.rows(np.arange(8 * 3).reshape(8, 3))
  assert rows.sharding.spec == PartitionSpec(placement.row_axes)
  np.testing.assert_array_equal(placement.fetch(rows), np.arange(24).reshape(8, 3))


@pytest.mark.slow   # several programs to compile (~40 s)
def test_scores_on_a_mesh_are_one_devices(model, tokenizer):
  sharded = Placement.make(MESH, TINY).put_model(model)
  examples = tasks.arithmetic_task(5)
  np.testing.assert_allclose(multiple_choice.loglikelihoods(sharded, tokenizer, examples),
                             multiple_choice.loglikelihoods(model, tokenizer, examples),
                             rtol=1e-5)
  rows = {name: {k: v[:6] if k != "bytes" else v for k, v in source.items()}
          for name, source in perplexity.heldout_rows(seq_len=32, rows_per_source=6).items()}
  one, mesh = (perplexity.evaluate(m, rows, batch_rows=3) for m in (model, sharded))   # 3 -> 4
  assert mesh["tokens"] == one["tokens"]
  assert mesh["loss"] == pytest.approx(one["loss"], rel=1e-5)
  reward = RewardModel(TINY, rngs=nnx.Rngs(4))
  prompts = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(3)]
  responses = [[str(i + 1), str(i), "no idea"] for i in range(3)]
  on_mesh = Placement.make(MESH, TINY).put_model(reward)
  for a, b in zip(score_responses(on_mesh, tokenizer, prompts, responses, rows=3),
                  score_responses(reward, tokenizer, prompts, responses, rows=3)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
