"""The planner against XLA: per-device memory and collective bytes of the compiled train step.

For small layouts on 8 fake CPU devices (each parallel axis alone and combined, both FSDP
modes, the remat policies, the pipeline), the planner (step="xla": this project's step as XLA
compiles it) predicts the compiled step's `memory_analysis()` (arguments + outputs +
temporaries, less the donated outputs that share the arguments' buffers) within 15% and the
payload of every collective per step, read from the compiled HLO with loop trip counts
(llama3_jax/planner/measure.py), within 10%. fp32, blockwise attention; one compile each
(~5 s on a quiet 2-core machine): one layout in the fast core, the rest marked slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

from llama3_jax.model import ModelConfig
from llama3_jax.planner import Layout, collectives, memory
from llama3_jax.planner.measure import measured_memory, total_payload
from llama3_jax.sharding import MeshConfig, ShardingConfig
from llama3_jax.train.setup import setup

MODEL = ModelConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=8, n_kv_heads=4,
                    head_dim=16, ffn_dim=384, attention="blockwise")
B, T = 32, 128
FIELDS = {"inputs": jnp.int32, "targets": jnp.int32, "segment_ids": jnp.int32,
          "loss_mask": jnp.float32}

# name: (mesh axes, sharding, remat, micro-batches), fast or slow; remat "minimal+fused" is
# remat "minimal" with fused_matmuls (q/k/v and gate/up one matmul each)
LAYOUTS = {
    "fsdp8": ({"fsdp": 8}, ShardingConfig(), "none", 1),
    "data2_fsdp2_tensor2_llama3": ({"data": 2, "fsdp": 2, "tensor": 2},
                                   ShardingConfig("llama3"), "none", 1),
    "fsdp8_llama3": ({"fsdp": 8}, ShardingConfig("llama3"), "none", 1),
    "data8": ({"data": 8}, ShardingConfig(), "none", 1),
    "fsdp2_tensor4_sp": ({"fsdp": 2, "tensor": 4}, ShardingConfig(sequence_parallel=True),
                         "none", 1),
    "fsdp2_context4": ({"fsdp": 2, "context": 4}, ShardingConfig(), "none", 1),
    "fsdp8_remat_full": ({"fsdp": 8}, ShardingConfig(), "full", 1),
    "fsdp2_stage4_pipeline": ({"fsdp": 2, "stage": 4}, ShardingConfig(), "none", 4),
    # Llama 3's mode: the pipeline's replicas sum their weight gradients once per step.
    "fsdp2_stage4_pipeline_llama3": ({"fsdp": 2, "stage": 4}, ShardingConfig("llama3"), "none",
                                     4),
    "data2_stage2_tensor2_interleaved": ({"data": 2, "stage": 2, "tensor": 2},
                                         ShardingConfig(pipeline_repeats=2), "none", 4),
    # Selective remat (every matmul's output kept): alone, with tensor x sequence parallelism
    # (the normed inputs gathered again in backward), and the 405B's pattern in miniature:
    # pipeline (interleaved, Llama 3's mode) x tensor x SP, each stage iteration kept so.
    "fsdp8_remat_minimal": ({"fsdp": 8}, ShardingConfig(), "minimal", 1),
    "fsdp2_tensor4_sp_minimal": ({"fsdp": 2, "tensor": 4}, ShardingConfig(sequence_parallel=True),
                                 "minimal", 1),
    # Context ranks shard the weights with fsdp; "minimal" gathers K/V again in backward.
    "fsdp2_context4_minimal": ({"fsdp": 2, "context": 4}, ShardingConfig(), "minimal", 1),
    "fsdp2_stage2_tensor2_sp_llama3_minimal": (
        {"fsdp": 2, "stage": 2, "tensor": 2},
        ShardingConfig("llama3", sequence_parallel=True, pipeline_repeats=2), "minimal", 4),
    "fsdp2_stage4_pipeline_llama3_full": ({"fsdp": 2, "stage": 4}, ShardingConfig("llama3"),
                                          "full", 4),
    # Megatron's two input-gradient reductions per layer: the 405B config's step in miniature.
    "fsdp2_tensor4_sp_fused": ({"fsdp": 2, "tensor": 4}, ShardingConfig(sequence_parallel=True),
                               "minimal+fused", 1),
    "fsdp2_stage2_tensor2_sp_llama3_fused": (
        {"fsdp": 2, "stage": 2, "tensor": 2},
        ShardingConfig("llama3", sequence_parallel=True, pipeline_repeats=2), "minimal+fused", 4),
}


def model_for(remat: str) -> ModelConfig:
  policy, _, fused = remat.partition("+")
  return MODEL.replace(remat=policy, fused_matmuls=fused == "fused")
FAST = {"data2_fsdp2_tensor2_llama3"}   # data, fsdp and tensor at once


def compiled_step(sizes, sharding, remat, micro_batches):
  s = setup(model_for(remat), MeshConfig(**{"fsdp": 1, **sizes}), sharding=sharding,
            micro_batches=micro_batches)
  batch = {name: jax.ShapeDtypeStruct((B, T), dtype, sharding=s.fns.batch_sharding)
           for name, dtype in FIELDS.items()}
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    return s.fns.train.jitted.lower(s.abstract_state, batch, np.float32(0)).compile()


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in LAYOUTS])
def test_planner_matches_the_compiled_step(name):
  sizes, sharding, remat, micro_batches = LAYOUTS[name]
  compiled = compiled_step(sizes, sharding, remat, micro_batches)
  model = model_for(remat)
  layout = Layout(sizes, T, B * T, micro_batches=micro_batches,
                  repeats=sharding.pipeline_repeats, schedule="circular",
                  fsdp_mode=sharding.fsdp_mode, remat=model.remat,
                  sequence_parallel=sharding.sequence_parallel, step="xla",
                  fused_matmuls=model.fused_matmuls)
  measured = measured_memory(compiled)["total"]
  planned = memory(model, layout)["total"]
  moved = total_payload(compiled.as_text())
  payload = sum(c.payload for c in collectives(model, layout))
  print(f"{name}: memory {planned / measured:.3f} of XLA's, payload {payload / moved:.3f}")
  assert abs(planned / measured - 1) <= 0.15, (planned, measured)
  assert abs(payload / moved - 1) <= 0.10, (payload, moved)
