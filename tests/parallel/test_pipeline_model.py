"""The Llama 3 model pipelined over `stage` equals it without a pipeline: loss, gradients and
parameters after 3 AdamW steps, alone and composed with data, fsdp, tensor and context, and
the full 4D mesh (fsdp 2 x tensor 2 x context 2 x stage 2) on 16 devices in a subprocess; layer
counts that do not divide the stages (padded layouts, llama3_jax/parallel/pipeline.py).

Same tolerance and optimizer settings as the other equivalence tests (tests/helpers.py: fp32,
1e-5 relative; Adam eps 1e-3 so reduction-order noise is not amplified into the parameters).
"""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec

from llama3_jax.errors import UserError
from llama3_jax.model import ModelConfig
from llama3_jax.sharding import MeshConfig, ShardingConfig, logical_to_spec, make_rules
from tests.helpers import assert_same_training, train_steps

MODEL = ModelConfig(vocab_size=96, d_model=40, n_layers=4, n_heads=4, n_kv_heads=2,
                    head_dim=6, ffn_dim=72, init_std=0.2)


def run(mesh_config, sharding=ShardingConfig(), micro_batches=1, devices=None, steps=3,
        model=MODEL):
  return train_steps(model, mesh_config, sharding, micro_batches=micro_batches, devices=devices,
                     steps=steps, B=24)


@functools.cache
def single_device(n_layers=MODEL.n_layers):
  return run(MeshConfig(fsdp=1), devices=jax.devices()[:1],
             model=MODEL.replace(n_layers=n_layers))


@pytest.mark.parametrize("mesh, repeats, micro_batches", [
    pytest.param(MeshConfig(stage=2, data=4), 1, 3,   # GPipe, M not a multiple of the stages
                 marks=pytest.mark.slow),
    pytest.param(MeshConfig(stage=2, fsdp=4), 2, 1,   # interleaved V = 2, one micro-batch
                 marks=pytest.mark.slow),
    pytest.param(MeshConfig(stage=4, fsdp=2), 1, 4,   # 4 stages
                 marks=pytest.mark.slow),
    pytest.param(MeshConfig(stage=4, data=2), 1, 8,   # 4 stages, M = 8
                 marks=pytest.mark.slow),
    (MeshConfig(stage=2, fsdp=2, tensor=2), 2, 3),    # stage x fsdp x tensor, interleaved
    pytest.param(MeshConfig(stage=2, context=2, fsdp=2), 1, 2,   # stage x context x fsdp
                 marks=pytest.mark.slow),
], ids=["gpipe_s2_m3_data4", "interleaved_s2_m1_fsdp4", "gpipe_s4_m4_fsdp2",
        "gpipe_s4_m8_data2", "interleaved_s2_m3_fsdp2_tensor2", "gpipe_s2_context2_fsdp2"])
def test_pipeline_equals_one_device(mesh, repeats, micro_batches):
  assert_same_training(run(mesh, ShardingConfig(pipeline_repeats=repeats), micro_batches),
                       single_device())


# Llama 3's FSDP mode: the rows' axes run as the pipeline's replicas, each accumulating its own
# weight gradient through the loop (summed once per step: only the order of the sum differs).
@pytest.mark.parametrize("n_layers, mesh, repeats, micro_batches", [
    # slow (~25 s idle): the fast core checks this mode's gradient sums once per step in HLO
    pytest.param(4, MeshConfig(stage=2, fsdp=2, tensor=2), 2, 3, marks=pytest.mark.slow),
    pytest.param(5, MeshConfig(stage=2, fsdp=2, context=2), 2, 2, marks=pytest.mark.slow),
    pytest.param(4, MeshConfig(stage=2, data=2, fsdp=2), 1, 4, marks=pytest.mark.slow),
], ids=["interleaved_s2_m3_fsdp2_tensor2", "uneven_l5_s2x2_fsdp2_context2",
        "gpipe_s2_m4_data2_fsdp2"])
def test_llama3_mode_pipeline_equals_one_device(n_layers, mesh, repeats, micro_batches):
  model = MODEL.replace(n_layers=n_layers)
  got = run(mesh, ShardingConfig("llama3", pipeline_repeats=repeats), micro_batches,
            model=model)
  assert_same_training(got, single_device(n_layers))


# The pipeline keeps what the model's remat policy keeps of each layer (parallel/pipeline.py):
# "minimal" every matmul output (and flash attention's), "full" each layer's input alone.
@pytest.mark.parametrize("remat, attention", [
    ("minimal", "blockwise"),
    pytest.param("full", "reference", marks=pytest.mark.slow),
])
def test_pipeline_honours_the_models_remat(remat, attention):
  model = MODEL.replace(remat=remat, attention=attention, attention_block_q=8,
                        attention_block_kv=8)
  got = run(MeshConfig(stage=2, fsdp=2, tensor=2), ShardingConfig("llama3", pipeline_repeats=2),
            3, model=model)
  assert_same_training(got, single_device())


def test_llama3_mode_pipeline_reduces_gradients_once_per_step():
  """No collective over `fsdp` inside the schedule's loop: each replica's weight gradient
  accumulates locally through the loop (it was an all-reduce of every iteration's chunk
  gradient, 370 GiB per step for the 405B)."""
  from flax import linen

  from llama3_jax.planner.measure import loop_multipliers
  from llama3_jax.sharding.hlo import axis_groups, collectives
  from llama3_jax.train.setup import setup
  from tests.helpers import LR, OPTIMIZER, lm_batch
  s = setup(MODEL, MeshConfig(stage=2, fsdp=4), sharding=ShardingConfig("llama3"),
            optimizer=OPTIMIZER, micro_batches=2)   # 12 rows each: 3 per fsdp replica
  batch = jax.device_put(lm_batch(MODEL.vocab_size, B=24), s.fns.batch_sharding)
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    hlo = s.fns.train.jitted.lower(s.abstract_state, batch, LR).compile().as_text()
  trips = loop_multipliers(hlo)
  fsdp = axis_groups(s.mesh, "fsdp")
  in_loop = [c for c in collectives(hlo) if trips.get(c.computation, 1) > 1]
  assert in_loop, "the schedule's loop has its stage collectives"
  assert not [c for c in in_loop if c.groups == fsdp], [c.shape for c in in_loop]
  once = [c for c in collectives(hlo) if c.op == "all-gather" and c.groups == fsdp]
  assert once   # the weights, gathered before the loop


@pytest.mark.parametrize("n_layers, mesh, sharding, micro_batches", [
    (3, MeshConfig(stage=2, fsdp=4), ShardingConfig(), 2),   # 1 + 2 layers
    (5, MeshConfig(stage=2, fsdp=2, tensor=2), ShardingConfig(pipeline_repeats=2), 3),
    (7, MeshConfig(stage=4, data=2), ShardingConfig(), 4),   # 1 + 2 + 2 + 2
    # The embedding and head replicated over stage (rows too few to split over it).
    (3, MeshConfig(stage=2, fsdp=4), ShardingConfig(rows_over_stage=False), 1),
], ids=["gpipe_l3_s2_fsdp4", "interleaved_l5_s2x2_fsdp2_tensor2", "gpipe_l7_s4_data2",
        "gpipe_l3_s2_rows_not_over_stage"])
@pytest.mark.slow
def test_uneven_pipeline_equals_one_device(n_layers, mesh, sharding, micro_batches):
  model = MODEL.replace(n_layers=n_layers)
  got = run(mesh, sharding, micro_batches, model=model)
  assert_same_training(got, single_device(n_layers))
  # Gradients and parameters hold the natural [L, ...] stack, never the padded slots.
  for tree in (got.grads, got.params):
    assert {a.shape[0] for a in jax.tree.leaves(tree["blocks"])} == {n_layers}


def test_an_uneven_stack_splits_over_stage_along_d_model():
  sizes = {"fsdp": 4, "stage": 2}
  spec = lambda model: logical_to_spec(("layers", "embed", "mlp"), make_rules(model, sizes))
  assert spec(MODEL) == PartitionSpec("stage", "fsdp", "tensor")         # 4 layers: by layer
  assert spec(MODEL.replace(n_layers=3)) == PartitionSpec(None, ("fsdp", "stage"), "tensor")
  # d_model 36 does not split 8 ways: the stack is replicated over stage instead.
  assert spec(MODEL.replace(n_layers=3, d_model=36)) == PartitionSpec(None, "fsdp", "tensor")


def test_bad_pipeline_layouts_are_clear_errors():
  with pytest.raises(UserError, match="n_layers=4 cannot fill stage=4 x pipeline_repeats=2"):
    run(MeshConfig(stage=4, fsdp=2), ShardingConfig(pipeline_repeats=2), 4, steps=0)


FOUR_D = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=16"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import test_pipeline_model as t
run = t.run(t.MeshConfig(fsdp=2, tensor=2, context=2, stage=2),
            t.ShardingConfig(pipeline_repeats=2), micro_batches=2)
reference = t.run(t.MeshConfig(fsdp=1), devices=jax.devices()[:1])
t.assert_same_training(run, reference)
print("4D OK", run.loss, reference.loss)
"""


@pytest.mark.slow
def test_full_4d_mesh_on_16_devices():
  here = pathlib.Path(__file__).resolve().parent
  env = {**os.environ, "PYTHONPATH": f"{here}{os.pathsep}{here.parents[1]}"}
  env.pop("XLA_FLAGS", None)
  done = subprocess.run([sys.executable, "-c", FOUR_D], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "4D OK" in done.stdout


VOCAB_OVER_FSDP = MeshConfig(stage=2, fsdp=4), ShardingConfig(vocab_over_fsdp=True)


@pytest.mark.slow   # the fast core splits the vocabulary over fsdp without a pipeline
def test_pipeline_with_the_vocabulary_over_fsdp_moves_targets_not_logits():
  """With the vocabulary over fsdp the logits' rows lie over `stage` and the batch's over
  fsdp x stage. The step moves the small targets to the logits' rows (constrain_as_logit_rows),
  not the logits' fp32 cotangent [B, T, V / fsdp] to the targets' (an all-gather over `stage`
  once 8x the rest of the step's, BENCHMARKS.md)."""
  from flax import linen

  from llama3_jax.sharding.hlo import collectives
  from llama3_jax.train.setup import setup
  from tests.helpers import LR, OPTIMIZER, lm_batch
  mesh, sharding = VOCAB_OVER_FSDP
  s = setup(MODEL, mesh, sharding=sharding, optimizer=OPTIMIZER, micro_batches=2)
  batch = jax.device_put(lm_batch(MODEL.vocab_size, B=24), s.fns.batch_sharding)
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    hlo = s.fns.train.jitted.lower(s.abstract_state, batch, LR).compile().as_text()
  logits_cotangent = [24, 16, MODEL.vocab_size // 4]
  gathered = [[int(d) for d in c.shape.split("[", 1)[1].split("]")[0].split(",") if d]
              for c in collectives(hlo) if c.op == "all-gather"]
  assert gathered and logits_cotangent not in gathered, gathered


@pytest.mark.slow   # the fast core checks vocab_over_fsdp's equivalence without a pipeline
def test_pipeline_with_the_vocabulary_over_fsdp_equals_one_device():
  assert_same_training(run(*VOCAB_OVER_FSDP, micro_batches=2), single_device())
