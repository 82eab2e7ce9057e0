"""Sharded train steps equal the single-device step: loss, gradients, and 3 optimizer steps.

fp32 on CPU: sharded runs differ from one device only in the order of reductions (psums of
partial sums), ~1e-7 relative; 1e-5 relative leaves a wide margin and still catches any wrong
layout (a mis-sharded weight gives O(1) differences). Helpers: tests/helpers.py.
"""

import functools

import jax
import numpy as np
import pytest
from flax import linen

from llama3_jax.model import ModelConfig
from llama3_jax.sharding import MeshConfig, ShardingConfig, make_rules
from llama3_jax.sharding.hlo import axis_groups, collectives, traffic
from llama3_jax.sharding.inspect import sharding_report
from llama3_jax.sharding.rules import logical_to_spec, vocab_over_fsdp_pays
from llama3_jax.train.setup import setup
from tests.helpers import (LR, OPTIMIZER, assert_same_training, lm_batch,
                           train_steps)

# Heads, FFN and vocab split by tensor 2 and 4; d_model by fsdp 2, 4 and 8.
MODEL = ModelConfig(vocab_size=96, d_model=40, n_layers=2, n_heads=8, n_kv_heads=4,
                    head_dim=6, ffn_dim=72, init_std=0.2)
REMAT_WARNING = "Involuntary full rematerialization"


def run(mesh_config, sharding=ShardingConfig(), model=MODEL, devices=None):
  return train_steps(model, mesh_config, sharding, devices=devices)


@functools.cache
def single_device(model=MODEL):
  return run(MeshConfig(fsdp=1), model=model, devices=jax.devices()[:1])


def assert_like_single_device(result, model=MODEL):
  """Loss and gradients of one batch, losses and parameters after 3 AdamW steps."""
  assert_same_training(result, single_device(model))


MESHES = {
    "data8": MeshConfig(data=8, fsdp=1),
    "fsdp8": MeshConfig(fsdp=8),
    "data2_fsdp4": MeshConfig(data=2, fsdp=4),
    "fsdp2_tensor4": MeshConfig(fsdp=2, tensor=4),
    "data2_fsdp2_tensor2": MeshConfig(data=2, fsdp=2, tensor=2),
}


# The fast core keeps two layouts that between them shard every axis in both FSDP modes.
FAST = {("fsdp8", "zero3"), ("data2_fsdp2_tensor2", "llama3")}


@pytest.mark.parametrize("mesh, fsdp_mode", [
    pytest.param(mesh, mode, marks=() if (mesh, mode) in FAST else pytest.mark.slow)
    for mode in ("zero3", "llama3") for mesh in MESHES])
def test_sharded_equals_single_device(mesh, fsdp_mode, capfd):
  assert_like_single_device(run(MESHES[mesh], ShardingConfig(fsdp_mode)))
  assert REMAT_WARNING not in capfd.readouterr().err


@pytest.mark.parametrize("mesh", [pytest.param("fsdp2_tensor4", marks=pytest.mark.slow),
                                  "data2_fsdp2_tensor2"])
def test_sequence_parallel_equals_single_device(mesh, capfd):
  assert_like_single_device(run(MESHES[mesh], ShardingConfig(sequence_parallel=True)))
  assert REMAT_WARNING not in capfd.readouterr().err


@pytest.mark.parametrize("mesh", [pytest.param("fsdp8", marks=pytest.mark.slow),
                                  "data2_fsdp2_tensor2"])
def test_vocab_over_fsdp_equals_single_device(mesh, capfd):
  assert_like_single_device(run(MESHES[mesh], ShardingConfig(vocab_over_fsdp=True)))
  assert REMAT_WARNING not in capfd.readouterr().err


@pytest.mark.slow
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
  auto = ShardingConfig(vocab_over_fsdp="auto")
  assert auto.resolve(32000, 8 * 256, {"fsdp": 8}).vocab_over_fsdp is True
  assert auto.resolve(512, 16 * 256, {"fsdp": 4, "tensor": 2}).vocab_over_fsdp is False
  assert auto == ShardingConfig()                                    # the default, stated once
  vocab_rows = lambda rules: logical_to_spec(("vocab", "embed"), rules)
  assert vocab_rows(make_rules(MODEL, {"fsdp": 8}, auto)) == vocab_rows(
      make_rules(MODEL, {"fsdp": 8}, ShardingConfig(vocab_over_fsdp=False)))   # no batch: off
  assert vocab_rows(make_rules(MODEL, {"fsdp": 8}, auto, batch_tokens=8)) == vocab_rows(
      make_rules(MODEL, {"fsdp": 8}, ShardingConfig(vocab_over_fsdp=True)))
  with pytest.raises(ValueError, match="use True, False or 'auto'"):
    ShardingConfig(vocab_over_fsdp="sometimes")


@pytest.mark.slow   # the fast core checks replicated KV heads under context parallelism
def test_replicated_kv_heads_equal_single_device():
  """tensor=4 > 2 KV heads: each KV head is replicated on two tensor ranks."""
  model = MODEL.replace(n_kv_heads=2)
  assert_like_single_device(run(MeshConfig(fsdp=2, tensor=4), model=model), model)


def compiled_train_step(mesh_config, sharding=ShardingConfig(), model=MODEL):
  s = setup(model, mesh_config, sharding=sharding, optimizer=OPTIMIZER)
  state = s.init_state()
  batch = jax.device_put(lm_batch(model.vocab_size), s.fns.batch_sharding)
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    hlo = s.fns.train.jitted.lower(state, batch, LR).compile().as_text()
  return s.mesh, state, s.rules, hlo


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


@pytest.mark.parametrize("fused, reductions", [pytest.param(False, 7, marks=pytest.mark.slow),
                                                (True, 4)])
def test_megatron_tensor_parallel_communication(fused, reductions):
  """Sequence-parallel TP, per layer: the residual stream gathered over `tensor` before attention
  and before the MLP and their outputs reduced, and in backward the outputs' gradients gathered
  and the input gradients reduced: two reductions with q/k/v and gate/up fused (Megatron's
  step), five with them apart. Counted in the compiled step's layer loops, in residual-stream
  units ([rows, T, D] per device)."""
  from llama3_jax.planner.measure import loop_multipliers
  model = MODEL.replace(fused_matmuls=fused)
  mesh, _, _, hlo = compiled_train_step(MeshConfig(fsdp=2, tensor=4),
                                        ShardingConfig(sequence_parallel=True), model)
  unit = 8 // 2 * 16 * model.d_model * 4   # rows per fsdp shard x T x D, fp32
  trips, tensor = loop_multipliers(hlo), axis_groups(mesh, "tensor")
  moved = {}
  for c in collectives(hlo):
    if c.groups == tensor and trips.get(c.computation, 1) > 1 and c.bytes % unit == 0:
      moved[c.op] = moved.get(c.op, 0) + c.bytes * trips[c.computation] // unit
  assert moved == {"all-gather": 4 * model.n_layers, "all-reduce": reductions * model.n_layers}


@pytest.mark.parametrize("mesh, sequence_parallel", [
    ("fsdp2_tensor4", True), pytest.param("data2_fsdp2_tensor2", False, marks=pytest.mark.slow)])
def test_fused_matmuls_equal_single_device(mesh, sequence_parallel):
  model = MODEL.replace(fused_matmuls=True)
  assert_like_single_device(run(MESHES[mesh], ShardingConfig(sequence_parallel=sequence_parallel),
                                model=model))


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


@pytest.mark.parametrize("mesh", ["fsdp8", pytest.param("data2_fsdp4", marks=pytest.mark.slow),
                                  pytest.param("fsdp2_tensor4", marks=pytest.mark.slow)])
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
