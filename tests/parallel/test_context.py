"""Context parallelism equals the run without it: loss and gradients, all-gather and ring.

fp32 on CPU, 8 fake devices. Context-parallel runs differ from one device only in summation
order (blockwise softmax, psums), ~1e-6 relative; 1e-5 still catches any wrong mask or order (a
token seeing one wrong key gives O(1e-2) differences).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

from llama3_jax.model import ModelConfig
from llama3_jax.model.attention_ops import reference_attention
from llama3_jax.model.transformer import segment_positions
from llama3_jax.parallel import context
from llama3_jax.sharding import MeshConfig, ShardingConfig, make_mesh, make_rules, validate
from llama3_jax.sharding.hlo import axis_groups, collectives
from llama3_jax.train.setup import setup
from tests.helpers import max_rel_error

# Heads 4 and KV heads 2 split by tensor 2; tensor 4 replicates KV heads. Blockwise attention
# with blocks (3, 5) that divide neither the chunks nor the local sequence: ragged blocks,
# skipped blocks and documents crossing block and chunk boundaries all occur.
MODEL = ModelConfig(vocab_size=64, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=6,
                    ffn_dim=40, init_std=0.2, attention="blockwise", attention_block_q=3,
                    attention_block_kv=5)
T = 32          # 2 * context divides it for context 2, 4, 8 (chunks of 8, 4, 2 tokens)
RTOL = 1e-5
MEASURED = {}   # max relative errors, printed after the module's tests (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def report_measured_errors():
  yield
  for name, (loss, grads) in sorted(MEASURED.items()):
    print(f"{name:36s} loss {loss:.1e}  grads {grads:.1e}")


def make_batch(B=4, positions=False):
  """Packed rows: documents of odd lengths crossing chunk boundaries, a one-token document,
  and padding (segment 0) with a zero loss mask."""
  r = np.random.RandomState(0)
  tokens = r.randint(0, MODEL.vocab_size, (B, T + 1))
  rows = [[5, 1, 9, 7, 4, 6], [13, 11, 1, 3, 4], [1, 1, 17, 13], [31, 1]]
  segments = np.stack([np.repeat(np.arange(1, len(l) + 1), l) for l in rows] * (B // 4))
  segments[0, -6:] = 0                        # row 0 ends in 6 padding tokens
  mask = (segments > 0) & np.concatenate([segments[:, 1:] == segments[:, :-1],
                                          np.zeros((B, 1), bool)], axis=1)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
           "loss_mask": mask.astype(np.float32)}
  if positions:
    batch["positions"] = np.asarray(segment_positions(jnp.asarray(segments)))
  return batch


def step_fns(mesh_config, sharding=ShardingConfig(), model=MODEL, devices=None):
  s = setup(model, mesh_config, sharding=sharding, devices=devices)
  return s.mesh, s.rules, s.init_state(), s.fns


def loss_and_grads(mesh_config, sharding=ShardingConfig(), model=MODEL, devices=None,
                   positions=False):
  *_, state, fns = step_fns(mesh_config, sharding, model, devices)
  loss, grads = fns.loss_and_grads(state, make_batch(positions=positions))
  return float(loss), jax.device_get(grads)


@functools.cache
def unsharded(model=MODEL):
  return loss_and_grads(MeshConfig(fsdp=1), model=model, devices=jax.devices()[:1])


def assert_equal_runs(run, reference, name):
  (loss, grads), (ref_loss, ref_grads) = run, reference
  MEASURED[name] = (abs(loss - ref_loss) / abs(ref_loss), max_rel_error(grads, ref_grads))
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
  assert MEASURED[name][1] <= RTOL, MEASURED[name]


MESHES = {
    "context2_fsdp4": MeshConfig(fsdp=4, context=2),
    "context4_fsdp2": MeshConfig(fsdp=2, context=4),
    "context8": MeshConfig(fsdp=1, context=8),
    "context2_tensor2_fsdp2": MeshConfig(fsdp=2, context=2, tensor=2),
}


@functools.cache
def context_run(mesh, schedule="all_gather"):
  # context8 takes the batch with explicit positions; the others derive them from segment ids.
  return loss_and_grads(MESHES[mesh], ShardingConfig(context_schedule=schedule),
                        positions=mesh == "context8")


@pytest.mark.parametrize("mesh", [
    pytest.param("context2_fsdp4", marks=pytest.mark.slow),
    pytest.param("context4_fsdp2", marks=pytest.mark.slow),
    pytest.param("context8", marks=pytest.mark.slow), "context2_tensor2_fsdp2"])
def test_context_parallel_equals_unsharded(mesh):
  assert_equal_runs(context_run(mesh), unsharded(), f"all_gather {mesh}")


@pytest.mark.parametrize("mesh", ["context4_fsdp2",
                                  pytest.param("context2_tensor2_fsdp2", marks=pytest.mark.slow)])
def test_ring_equals_all_gather_and_unsharded(mesh):
  assert_equal_runs(context_run(mesh, "ring"), unsharded(), f"ring {mesh}")
  assert_equal_runs(context_run(mesh, "ring"), context_run(mesh), f"ring vs all_gather {mesh}")


def test_replicated_kv_heads_remat_and_reference_kernel():
  """tensor=4 > 2 KV heads (each shard gets a copy of its KV head), full remat of the scanned
  layers around the shard_map, and the dense reference kernel on local queries."""
  model = MODEL.replace(attention="reference", remat="full")
  run = loss_and_grads(MeshConfig(fsdp=1, context=2, tensor=4), model=model)
  assert_equal_runs(run, unsharded(model.replace(remat="none")), "all_gather tensor4 remat")


def test_attention_equals_reference_in_token_order():
  """The kernel alone: permuted in, un-permuted out, equals dense attention in token order."""
  mesh_config = MESHES["context4_fsdp2"]
  mesh = make_mesh(mesh_config)
  rules = make_rules(MODEL, mesh_config.sizes(8))
  r = np.random.RandomState(1)
  B, N, K, H = 2, 4, 2, 6
  q = jnp.asarray(r.randn(B, T, N, H), jnp.float32)
  k, v = (jnp.asarray(r.randn(B, T, K, H), jnp.float32) for _ in range(2))
  seg = jnp.asarray(make_batch()["segment_ids"][:B])
  idx = jnp.broadcast_to(jnp.arange(T), (B, T))
  expected = reference_attention(q, k, v, seg, seg, idx, idx)
  order = context.balanced_order(T, 4)
  permuted = [x[:, order] for x in (q, k, v, seg, idx)]
  for schedule in context.SCHEDULES:
    attend = functools.partial(context.context_attention, config=MODEL, mesh=mesh, rules=rules,
                               schedule=schedule)
    with jax.set_mesh(mesh), linen.logical_axis_rules(rules):
      out = jax.jit(attend)(*permuted)
    np.testing.assert_allclose(context.restore_order(out, 4), expected, rtol=1e-5, atol=1e-6)


def test_reorder_balances_chunks_and_keeps_true_positions():
  assert list(context.balanced_order(8, 2)) == [0, 1, 6, 7, 2, 3, 4, 5]
  batch = make_batch()
  out = context.reorder_batch(batch, 4)
  order = context.balanced_order(T, 4)
  for name in ("inputs", "targets", "segment_ids", "loss_mask"):
    np.testing.assert_array_equal(out[name], batch[name][:, order])
  np.testing.assert_array_equal(out["indices"][0], order)
  np.testing.assert_array_equal(
      out["positions"], np.asarray(segment_positions(jnp.asarray(batch["segment_ids"])))[:, order])
  np.testing.assert_array_equal(context.restore_order(out["inputs"], 4), batch["inputs"])
  # Rank i's causal work: the same for every rank (count of (query, key) pairs it computes).
  causal = np.tril(np.ones((T, T)))[order].reshape(4, T // 4, T).sum(axis=(1, 2))
  assert len(set(causal)) == 1


def test_seq_len_not_divisible_fails_clearly():
  message = r"sequence length 36 is not divisible by 2\*context=8 \(context=4.*multiple of 8"
  with pytest.raises(ValueError, match=message):
    validate(MESHES["context4_fsdp2"], MODEL, n_devices=8, global_batch=4, seq_len=36)
  _, _, state, fns = cached_context4()
  batch = {name: np.pad(x, [(0, 0), (0, 4)]) for name, x in make_batch().items()}   # T = 36
  with pytest.raises(ValueError, match=message):   # from the step, before XLA sees a shape
    fns.loss_and_grads(state, batch)


@functools.cache
def cached_context4():
  return step_fns(MESHES["context4_fsdp2"])


def test_kv_all_gathered_only_over_context():
  """Per layer, K and V [B/fsdp, T, K, H] are gathered over the context groups (inside the
  scan over layers: one instruction each) and dK/dV reduce-scattered back."""
  mesh, rules, state, fns = cached_context4()
  batch = jax.device_put(make_batch(), fns.batch_sharding)
  with jax.set_mesh(mesh), linen.logical_axis_rules(rules):
    hlo = fns.loss_and_grads.jitted.lower(state, batch).compile().as_text()
  groups = axis_groups(mesh, "context")
  kv_shape = f"f32[2,{T},{MODEL.n_kv_heads},{MODEL.head_dim}]"
  ops = collectives(hlo)
  assert sum(c.op == "all-gather" and c.groups == groups and c.shape.startswith(kv_shape)
             for c in ops) == 2
  assert sum(c.op == "reduce-scatter" and c.groups == groups for c in ops) == 2
