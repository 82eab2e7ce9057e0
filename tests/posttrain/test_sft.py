"""SFT: the loss is normalised over the whole batch's weighted tokens, so meshes and
micro-batches of uneven weighted-token counts give the same loss and gradients."""

import jax
import numpy as np
import pytest

from llama3_jax.optim.schedules import Stage
from llama3_jax.posttrain import task
from llama3_jax.data.conversations.prepared import ConversationSource, prepare_conversations
from llama3_jax.sharding import MeshConfig
from llama3_jax.train.setup import setup
from tests.helpers import OPTIMIZER, RTOL, assert_trees_close
from tests.posttrain.conftest import TINY

SEQ, ROWS = 128, 8


@pytest.fixture(scope="module")
def sft_batch(tmp_path_factory, tokenizer_path):
  out = tmp_path_factory.mktemp("sft")
  files = task.write_task(out / "task", train_questions=80, heldout=10)
  prepare_conversations(files["sft"], tokenizer_path, out / "data", kind="sft", max_tokens=SEQ)
  source = ConversationSource(out / "data", seed=0, vocab_size=TINY.vocab_size)
  stage = Stage(until_tokens=None, batch_tokens=ROWS * SEQ, seq_len=SEQ)
  return source.read(1, 0, stage, (0, ROWS))


def test_micro_batches_hold_uneven_weighted_tokens(sft_batch):
  per_micro = [sft_batch["loss_mask"][m::4].sum() for m in range(4)]
  assert len(set(per_micro)) > 1, per_micro   # else averaging per micro-batch would pass too


@pytest.mark.parametrize("mesh, micro", [
    pytest.param(MeshConfig(fsdp=2, tensor=2), 1, marks=pytest.mark.slow),
    pytest.param(MeshConfig(fsdp=2, context=2), 1, marks=pytest.mark.slow),
    (MeshConfig(fsdp=1), 4),
    pytest.param(MeshConfig(fsdp=2, tensor=2, context=2), 2, marks=pytest.mark.slow),
])
def test_sft_loss_and_grads_equal_one_device(sft_batch, mesh, micro):
  one = setup(TINY, MeshConfig(fsdp=1), optimizer=OPTIMIZER, devices=jax.devices()[:1])
  state = one.init_state()
  loss, grads = jax.device_get(one.fns.loss_and_grads(state, sft_batch))
  n = mesh.fsdp * mesh.tensor * mesh.context
  s = setup(TINY, mesh, optimizer=OPTIMIZER, micro_batches=micro, devices=jax.devices()[:n])
  placed = jax.device_put(jax.device_get(state), s.shardings)
  loss_n, grads_n = jax.device_get(s.fns.loss_and_grads(placed, sft_batch))
  np.testing.assert_allclose(loss_n, loss, rtol=RTOL)
  assert_trees_close(grads_n, grads)
  # The loss is the mean over weighted (assistant) tokens only.
  assert sft_batch["loss_mask"].sum() < (sft_batch["segment_ids"] > 0).sum() / 2
