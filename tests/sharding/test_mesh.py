"""Mesh construction (device order, hybrid multi-node meshes) and validation errors."""

import dataclasses

import jax
import numpy as np
import pytest

from llama3_jax.model import ModelConfig
from llama3_jax.sharding import AXES, MeshConfig, make_mesh, validate
from llama3_jax.sharding.mesh import device_array

MODEL = ModelConfig(vocab_size=96, d_model=40, n_layers=4, n_heads=8, n_kv_heads=4,
                    head_dim=6, ffn_dim=72)


def test_fill_axis_and_order():
  mesh = make_mesh(MeshConfig(fsdp=-1, tensor=2, context=2))
  assert mesh.axis_names == AXES
  assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "stage": 1, "context": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  # tensor innermost (neighbouring devices), then context, fsdp outermost.
  np.testing.assert_array_equal(ids[0, 0, 0, 0, :], [0, 1])
  np.testing.assert_array_equal(ids[0, 0, 0, :, 0], [0, 2])
  np.testing.assert_array_equal(ids[0, :, 0, 0, 0], [0, 4])


@pytest.mark.parametrize("config,message", [
    (MeshConfig(fsdp=4, tensor=4), "multiply to 16, but there are 8 devices"),
    (MeshConfig(fsdp=-1, tensor=3), "cannot fill 8 devices: 8 is not a multiple of 3"),
    (MeshConfig(fsdp=-1, data=-1), "at most one -1"),
    (MeshConfig(fsdp=8, tensor=0), "sizes must be positive"),
])
def test_bad_mesh_sizes(config, message):
  with pytest.raises(ValueError, match=message):
    make_mesh(config)


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """Enough of a GPU device for mesh_utils: two nodes (processes) of four devices."""
  id: int
  process_index: int
  platform: str = "gpu"
  device_kind: str = "fake"


@pytest.mark.parametrize("config", [MeshConfig(fsdp=2, tensor=4, dcn_fsdp=2),
                                    MeshConfig(data=2, fsdp=2, tensor=2, dcn_data=2),
                                    MeshConfig(fsdp=4, tensor=2, dcn_fsdp=2)])
def test_hybrid_mesh_keeps_tensor_inside_a_node(config):
  devices = [FakeDevice(i, i // 4) for i in range(8)]
  array = device_array(config, devices)
  nodes = np.vectorize(lambda d: d.process_index)(array)
  tensor_groups = np.moveaxis(nodes, AXES.index("tensor"), -1).reshape(-1, config.tensor)
  assert all(len(set(group)) == 1 for group in tensor_groups.tolist())
  # ...while the dcn axis spans both nodes.
  dcn_axis = next(a for a in AXES if getattr(config, "dcn_" + a) > 1)
  groups = np.moveaxis(nodes, AXES.index(dcn_axis), -1).reshape(-1, getattr(config, dcn_axis))
  assert all(len(set(group)) == 2 for group in groups.tolist())


def test_hybrid_axis_must_split_over_nodes():
  with pytest.raises(ValueError, match="tensor=4 does not split over dcn_tensor=3"):
    device_array(MeshConfig(fsdp=2, tensor=4, dcn_tensor=3), [FakeDevice(i, 0) for i in range(8)])


@pytest.mark.parametrize("mesh,model,batch,seq,message", [
    (MeshConfig(fsdp=2, tensor=4), dict(n_heads=6, n_kv_heads=2), 8, 64,
     "n_heads=6 is not divisible by tensor=4"),
    (MeshConfig(fsdp=4, tensor=2), dict(ffn_dim=75), 8, 64, "ffn_dim=75 is not divisible"),
    (MeshConfig(fsdp=4, tensor=2), dict(vocab_size=97), 8, 64,
     "vocab_size=97 is not divisible by tensor=2"),
    (MeshConfig(fsdp=2, tensor=4), dict(n_heads=12, n_kv_heads=6), 8, 64,
     "n_kv_heads=6 is not divisible by tensor=4"),
    (MeshConfig(fsdp=1, tensor=8), dict(n_heads=24, n_kv_heads=3, vocab_size=96, ffn_dim=80),
     8, 64, "tensor=8 is not a multiple of n_kv_heads=3"),
    (MeshConfig(fsdp=2, stage=4), dict(n_layers=3), 8, 64, "n_layers=3 cannot fill stage=4"),
    (MeshConfig(data=2, fsdp=4), {}, 12, 64, "global batch 12 is not divisible by data\\*fsdp\\*stage=8"),
    (MeshConfig(fsdp=2, context=4), {}, 8, 36,
     "sequence length 36 is not divisible by 2\\*context=8"),
])
def test_validation_names_axis_numbers_and_fix(mesh, model, batch, seq, message):
  with pytest.raises(ValueError, match=message) as error:
    validate(mesh, MODEL.replace(**model), n_devices=8, global_batch=batch, seq_len=seq)
  assert "choose" in str(error.value) or "use" in str(error.value) or "pad" in str(error.value)


def test_validation_accepts_replicated_kv_heads():
  # 4 KV heads on tensor=8: each KV head is replicated on two tensor ranks (Llama 3 style).
  sizes = validate(MeshConfig(fsdp=1, tensor=8), MODEL, n_devices=8, global_batch=8,
                   seq_len=64)
  assert sizes["tensor"] == 8
