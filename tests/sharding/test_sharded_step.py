"""Sharded train steps equal the single-device step: loss, gradients, and 3 optimizer steps.

fp32 on CPU: sharded runs differ from one device only in the order of reductions (psums of
partial sums), ~1e-7 relative; 1e-5 relative leaves a wide margin and still catches any wrong
layout (a mis-sharded weight gives O(1) differences).
"""

import functools

import jax
import numpy as np
import pytest
from flax import linen

from llama3_jax.model import ModelConfig
from llama3_jax.optim.optimizer import build_optimizer
from llama3_jax.sharding import MeshConfig, ShardingConfig, make_mesh, make_rules
from llama3_jax.sharding.hlo import axis_groups, collectives, traffic
from llama3_jax.sharding.inspect import sharding_report
from llama3_jax.sharding.rules import vocab_over_fsdp_pays
from llama3_jax.train.state import init_train_state
from llama3_jax.train.step import make_step_fns

# Heads, FFN and vocab split by tensor 2 and 4; d_model by fsdp 2, 4 and 8.
MODEL = ModelConfig(vocab_size=96, d_model=40, n_layers=2, n_heads=8, n_kv_heads=4,
                    head_dim=6, ffn_dim=72, init_std=0.2)
RTOL = 1e-5
# Adam divides by sqrt(v) + eps: with the default eps=1e-8 a gradient element at the ~1e-8
# reduction-order noise level moves its weight by a full `lr` in either direction, so parameters
# after a few steps would differ by O(lr) for reasons that have nothing to do with sharding.
# eps=1e-3 bounds that amplification (lr / eps = 10) while every moment is still sharded and
# updated exactly as in training.
OPTIMIZER = build_optimizer(eps=1e-3)
LR = 1e-2
REMAT_WARNING = "Involuntary full rematerialization"


def make_batch(seed=0, B=8, T=16):
  r = np.random.RandomState(seed)
  tokens = r.randint(0, MODEL.vocab_size, (B, T + 1))
  segments = np.repeat([[1, 2, 3]], [5, 7, T - 12], axis=1).repeat(B, axis=0)
  mask = np.ones((B, T), np.float32)
  mask[:, -3:] = 0   # padding at the end of each row
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
          "loss_mask": mask}


def run(mesh_config, sharding=ShardingConfig(), model=MODEL, devices=None, steps=3):
  devices = jax.devices() if devices is None else devices
  mesh = make_mesh(mesh_config, devices)
  rules = make_rules(model, mesh_config.sizes(len(devices)), sharding)
  graphdef, state, shardings = init_train_state(model, OPTIMIZER, mesh, rules, seed=0)
  fns = make_step_fns(graphdef, shardings, mesh, rules, sharding)
  loss, grads = fns.loss_and_grads(state, make_batch())
  losses = []
  for i in range(steps):
    state, metrics = fns.train(state, make_batch(seed=i), LR)
    losses.append(float(metrics["loss"]))
  params = jax.device_get(state["model"])
  return float(loss), jax.device_get(grads), losses, params


@functools.cache
def single_device(model=MODEL):
  return run(MeshConfig(fsdp=1), model=model, devices=jax.devices()[:1])


def assert_trees_close(a, b, rtol=RTOL):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert np.abs(x - y).max() <= rtol * np.abs(y).max(), np.abs(x - y).max()


def assert_like_single_device(result, model=MODEL):
  """Loss and gradients of one batch, losses and parameters after 3 AdamW steps."""
  loss, grads, losses, params = result
  ref_loss, ref_grads, ref_losses, ref_params = single_device(model)
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
  assert_trees_close(grads, ref_grads)
  np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
  assert_trees_close(params, ref_params)


MESHES = {
    "data8": MeshConfig(data=8, fsdp=1),
    "fsdp8": MeshConfig(fsdp=8),
    "data2_fsdp4": MeshConfig(data=2, fsdp=4),
    "fsdp2_tensor4": MeshConfig(fsdp=2, tensor=4),
    "data2_fsdp2_tensor2": MeshConfig(data=2, fsdp=2, tensor=2),
}


@pytest.mark.parametrize("fsdp_mode", ["zero3", "llama3"])
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_equals_single_device(mesh, fsdp_mode, capfd):
  assert_like_single_device(run(MESHES[mesh], ShardingConfig(fsdp_mode)))
  assert REMAT_WARNING not in capfd.readouterr().err


@pytest.mark.parametrize("mesh", ["fsdp2_tensor4", "data2_fsdp2_tensor2"])
def test_sequence_parallel_equals_single_device(mesh, capfd):
  assert_like_single_device(run(MESHES[mesh], ShardingConfig(sequence_parallel=True)))
  assert REMAT_WARNING not in capfd.readouterr().err


@pytest.mark.parametrize("mesh", ["fsdp8", "data2_fsdp2_tensor2"])
def test_vocab_over_fsdp_equals_single_device(mesh, capfd):
  assert_like_single_device(run(MESHES[mesh], ShardingConfig(vocab_over_fsdp=True)))
  assert REMAT_WARNING not in capfd.readouterr().err


def test_vocab_over_fsdp_keeps_the_vocabulary_tables_in_place():
  """Split by vocabulary, the embedding and the LM head are neither gathered nor all-reduced:
  with more vocabulary entries (1024) than tokens in the batch (128), the fsdp collectives move
  both tables less (gathered, gradients reduced); a few batch-sized activations move instead."""
  model = MODEL.replace(vocab_size=1024)
  tables = 2 * model.vocab_size * model.d_model * 4
  activations = 8 * 16 * model.d_model * 4   # the batch's rows of d_model, gathered once
  moved = {}
  for vocab_over_fsdp in (False, True):
    mesh, state, _, hlo = compiled_train_step(
        MeshConfig(fsdp=8), ShardingConfig(vocab_over_fsdp=vocab_over_fsdp), model)
    per_op = traffic(hlo, MODEL.n_layers, groups=axis_groups(mesh, "fsdp"))
    moved[vocab_over_fsdp] = {op: size for op, (_, size) in per_op.items()}
    embed = state["model"]["embed_vd"][...]
    assert ("fsdp" in embed.sharding.spec[0]) == vocab_over_fsdp   # rows: vocab, cols: embed
  assert moved[False]["all-gather"] - moved[True]["all-gather"] >= tables - 3 * activations
  assert moved[False]["all-reduce"] - moved[True]["all-reduce"] >= tables - 3 * activations


def test_vocab_over_fsdp_pays_while_the_group_holds_fewer_tokens_than_the_vocabulary():
  assert vocab_over_fsdp_pays(32000, 8 * 256, {"fsdp": 8})          # the peers' tiny config
  assert not vocab_over_fsdp_pays(512, 16 * 256, {"fsdp": 4, "tensor": 2})
  assert not vocab_over_fsdp_pays(128256, 4096 * 1024, {"fsdp": 64, "tensor": 8})   # 8B
  assert not vocab_over_fsdp_pays(32000, 2048, {"data": 8})         # no fsdp axis
  with pytest.raises(ValueError, match="vocab_over_fsdp"):
    ShardingConfig(vocab_over_fsdp="auto")


def test_replicated_kv_heads_equal_single_device():
  """tensor=4 > 2 KV heads: each KV head is replicated on two tensor ranks."""
  model = MODEL.replace(n_kv_heads=2)
  loss, grads, _, params = run(MeshConfig(fsdp=2, tensor=4), model=model)
  ref_loss, ref_grads, _, ref_params = single_device(model)
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
  assert_trees_close(grads, ref_grads)
  assert_trees_close(params, ref_params)


def compiled_train_step(mesh_config, sharding=ShardingConfig(), model=MODEL):
  mesh = make_mesh(mesh_config)
  rules = make_rules(model, mesh_config.sizes(8), sharding)
  graphdef, state, shardings = init_train_state(model, OPTIMIZER, mesh, rules)
  fns = make_step_fns(graphdef, shardings, mesh, rules, sharding)
  batch = jax.device_put(make_batch(), fns.batch_sharding)
  with jax.set_mesh(mesh), linen.logical_axis_rules(rules):
    hlo = fns.train.jitted.lower(state, batch, LR).compile().as_text()
  return mesh, state, rules, hlo


def test_tensor_parallel_collectives():
  """Megatron TP: all-reduces over `tensor` after the row-parallel projections; with sequence
  parallelism the residual stream is all-gathered over `tensor` instead."""
  mesh, _, _, hlo = compiled_train_step(MeshConfig(fsdp=2, tensor=4))
  ops = collectives(hlo)
  tensor = axis_groups(mesh, "tensor")
  assert tensor == ((0, 1, 2, 3), (4, 5, 6, 7))
  assert sum(c.op == "all-reduce" and c.groups == tensor for c in ops) >= 2
  _, _, _, sp_hlo = compiled_train_step(MeshConfig(fsdp=2, tensor=4),
                                        ShardingConfig(sequence_parallel=True))
  sp_ops = collectives(sp_hlo)
  assert any(c.op == "all-gather" and c.groups == tensor for c in sp_ops)


def test_fsdp_modes_gather_weights_once_or_twice():
  """ZeRO-3 gathers each layer's weights in forward and again in backward; Llama 3's mode
  gathers every weight exactly once per step. Both reduce gradients over `fsdp`."""
  results = {}
  for mode in ("zero3", "llama3"):
    mesh, state, _, hlo = compiled_train_step(MeshConfig(fsdp=8), ShardingConfig(mode))
    results[mode] = traffic(hlo, MODEL.n_layers, groups=axis_groups(mesh, "fsdp"))
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(state["model"]))
  assert results["llama3"]["all-gather"][1] == param_bytes
  assert results["zero3"]["all-gather"][1] > 1.5 * param_bytes
  for mode in results:
    reduced = sum(results[mode].get(op, (0, 0))[1] for op in ("all-reduce", "reduce-scatter"))
    assert reduced >= param_bytes


@pytest.mark.parametrize("mesh", ["fsdp8", "data2_fsdp4", "fsdp2_tensor4"])
def test_bytes_per_device_match_the_arrays(mesh):
  """The inspection report's bytes per device equal the real shards, e.g. 1/8 under fsdp8."""
  mesh_obj, state, rules, _ = compiled_train_step(MESHES[mesh])
  report = sharding_report(state, mesh_obj, rules)
  arrays = jax.tree.leaves(state)
  assert len(report.rows) == len(arrays)
  for row, array in zip(report.rows, arrays):
    assert row.bytes_per_device == array.addressable_shards[0].data.nbytes, row.path
  if mesh == "fsdp8":
    wq = next(r for r in report.rows if r.path == "model.blocks.attn.wq_dnh")
    assert wq.bytes_per_device * 8 == np.prod(wq.shape) * 4
