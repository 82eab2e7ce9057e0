"""The Llama 3 model pipelined over `stage` equals it without a pipeline: loss, gradients and
parameters after 3 AdamW steps, alone and composed with data, fsdp, tensor and context, and
the full 4D mesh (fsdp 2 x tensor 2 x context 2 x stage 2) on 16 devices in a subprocess.

Same tolerance and optimizer settings as tests/sharding/test_sharded_step.py (fp32, 1e-5
relative; Adam eps 1e-3 so reduction-order noise is not amplified into the parameters).
"""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from llama3_jax.model import ModelConfig
from llama3_jax.optim.optimizer import build_optimizer
from llama3_jax.sharding import MeshConfig, ShardingConfig, make_mesh, make_rules
from llama3_jax.train.state import init_train_state
from llama3_jax.train.step import make_step_fns

MODEL = ModelConfig(vocab_size=96, d_model=40, n_layers=4, n_heads=4, n_kv_heads=2,
                    head_dim=6, ffn_dim=72, init_std=0.2)
OPTIMIZER = build_optimizer(eps=1e-3)
LR, RTOL = 1e-2, 1e-5


def make_batch(seed=0, B=24, T=16):
  r = np.random.RandomState(seed)
  tokens = r.randint(0, MODEL.vocab_size, (B, T + 1))
  segments = np.repeat([[1, 2, 3]], [5, 7, T - 12], axis=1).repeat(B, axis=0)
  mask = np.ones((B, T), np.float32)
  mask[:, -3:] = 0
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
          "loss_mask": mask}


def run(mesh_config, sharding=ShardingConfig(), micro_batches=1, devices=None, steps=3):
  devices = jax.devices() if devices is None else devices
  mesh = make_mesh(mesh_config, devices)
  rules = make_rules(MODEL, mesh_config.sizes(len(devices)), sharding)
  graphdef, state, shardings = init_train_state(MODEL, OPTIMIZER, mesh, rules, seed=0)
  fns = make_step_fns(graphdef, shardings, mesh, rules, sharding, micro_batches)
  loss, grads = fns.loss_and_grads(state, make_batch())
  losses = []
  for i in range(steps):
    state, metrics = fns.train(state, make_batch(seed=i), LR)
    losses.append(float(metrics["loss"]))
  return float(loss), jax.device_get(grads), losses, jax.device_get(state["model"])


@functools.cache
def single_device():
  return run(MeshConfig(fsdp=1), devices=jax.devices()[:1])


def assert_trees_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert np.abs(x - y).max() <= RTOL * np.abs(y).max(), np.abs(x - y).max()


@pytest.mark.parametrize("mesh, repeats, micro_batches", [
    (MeshConfig(stage=2, data=4), 1, 3),             # GPipe, M not a multiple of the stages
    (MeshConfig(stage=2, fsdp=4), 2, 1),             # interleaved V = 2, one micro-batch
    (MeshConfig(stage=4, fsdp=2), 1, 4),             # 4 stages
    (MeshConfig(stage=4, data=2), 1, 8),             # 4 stages, M = 8
    (MeshConfig(stage=2, fsdp=2, tensor=2), 2, 3),   # stage x fsdp x tensor
    (MeshConfig(stage=2, context=2, fsdp=2), 1, 2),  # stage x context x fsdp
], ids=["gpipe_s2_m3_data4", "interleaved_s2_m1_fsdp4", "gpipe_s4_m4_fsdp2",
        "gpipe_s4_m8_data2", "interleaved_s2_m3_fsdp2_tensor2", "gpipe_s2_context2_fsdp2"])
def test_pipeline_equals_one_device(mesh, repeats, micro_batches):
  loss, grads, losses, params = run(mesh, ShardingConfig(pipeline_repeats=repeats),
                                    micro_batches)
  ref_loss, ref_grads, ref_losses, ref_params = single_device()
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
  assert_trees_close(grads, ref_grads)
  np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
  assert_trees_close(params, ref_params)


def test_bad_pipeline_layouts_are_clear_errors():
  with pytest.raises(ValueError, match="n_layers=4 cannot be cut into stage=4 x repeats=2"):
    run(MeshConfig(stage=4, fsdp=2), ShardingConfig(pipeline_repeats=2), 4, steps=0)


FOUR_D = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=16"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
import test_pipeline_model as t
loss, grads, losses, params = t.run(t.MeshConfig(fsdp=2, tensor=2, context=2, stage=2),
                                    t.ShardingConfig(pipeline_repeats=2), micro_batches=2)
ref_loss, ref_grads, ref_losses, ref_params = t.run(t.MeshConfig(fsdp=1),
                                                    devices=jax.devices()[:1])
np.testing.assert_allclose(loss, ref_loss, rtol=t.RTOL)
t.assert_trees_close(grads, ref_grads)
np.testing.assert_allclose(losses, ref_losses, rtol=t.RTOL)
t.assert_trees_close(params, ref_params)
print("4D OK", loss, ref_loss)
"""


def test_full_4d_mesh_on_16_devices():
  here = pathlib.Path(__file__).resolve().parent
  env = {**os.environ, "PYTHONPATH": f"{here}{os.pathsep}{here.parents[1]}"}
  env.pop("XLA_FLAGS", None)
  done = subprocess.run([sys.executable, "-c", FOUR_D], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "4D OK" in done.stdout
