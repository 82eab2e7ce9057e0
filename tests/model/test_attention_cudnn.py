"""`attention="cudnn"`: which kernel it selects, its fallback and its errors, on CPU.

cuDNN itself needs an NVIDIA GPU (benchmarks/gpu.py runs it there); here the GPU is faked by
patching the platform check, and `jax.nn.dot_product_attention` is spied on to see what the
model asks cuDNN for.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llama3_jax.model import attention_ops
from llama3_jax.model.config import SIZES, ModelConfig
from llama3_jax.model.transformer import Transformer

BF16 = SIZES["debug"].replace(head_dim=24, dtype="bfloat16")


def tokens(B=2, T=16):
  return jnp.asarray(np.random.RandomState(0).randint(0, 512, (B, T)))


def test_cudnn_needs_a_half_precision_dtype_and_a_head_dim_it_has_kernels_for():
  with pytest.raises(ValueError, match="dtype='bfloat16'"):
    SIZES["debug"].replace(attention="cudnn")                 # fp32 activations
  with pytest.raises(ValueError, match="head_dim a multiple of 8"):
    BF16.replace(head_dim=20, attention="cudnn")
  with pytest.raises(ValueError, match="use one of 'reference', 'blockwise', 'cudnn'"):
    BF16.replace(attention="flash")
  assert isinstance(BF16.replace(attention="cudnn"), ModelConfig)


def test_unsupported_reasons_name_the_platform_and_the_dtype(monkeypatch):
  assert "'cpu'" in attention_ops.cudnn_unsupported(jnp.bfloat16)
  assert "'tpu'" in attention_ops.cudnn_unsupported(jnp.bfloat16, "tpu")

  class Client:
    platform_version = "rocm 6.2"

  class Device:
    client = Client()

  monkeypatch.setattr(jax, "devices", lambda *a: [Device()])
  assert "not an NVIDIA" in attention_ops.cudnn_unsupported(jnp.bfloat16, "gpu")
  Client.platform_version = "PJRT C API\ncuda 12080"
  assert "float32" in attention_ops.cudnn_unsupported(jnp.float32, "gpu")
  assert attention_ops.cudnn_unsupported(jnp.bfloat16, "gpu") is None


def test_on_cpu_cudnn_falls_back_to_reference_with_a_warning():
  reference = Transformer(BF16, rngs=nnx.Rngs(0))
  cudnn = Transformer(BF16.replace(attention="cudnn"), rngs=nnx.Rngs(0))
  attention_ops._WARNED.clear()
  with pytest.warns(UserWarning, match="falls back to 'reference': the platform is 'cpu'"):
    out = cudnn(tokens())
  np.testing.assert_array_equal(np.asarray(out), np.asarray(reference(tokens())))
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # once per reason, not once per layer or call
    cudnn(tokens())


def test_on_a_gpu_the_model_calls_cudnn_causal_only_in_row_order(monkeypatch):
  calls = []
  xla = jax.nn.dot_product_attention

  def spy(*args, implementation=None, **kwargs):
    if implementation is not None:   # (the reference model's calls pass none)
      calls.append((implementation, kwargs["is_causal"]))
    return xla(*args, **kwargs)   # XLA's kernel stands in for cuDNN's on CPU

  monkeypatch.setattr(attention_ops, "cudnn_unsupported", lambda dtype: None)
  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  model = Transformer(BF16.replace(attention="cudnn", scan_layers=False), rngs=nnx.Rngs(0))
  reference = Transformer(BF16.replace(scan_layers=False), rngs=nnx.Rngs(0))
  segment = jnp.asarray([[0] * 6 + [1] * 10, [0] * 16])
  out = model(tokens(), segment_ids=segment)
  assert calls == [("cudnn", True)] * BF16.n_layers
  np.testing.assert_allclose(np.asarray(out), np.asarray(reference(tokens(), segment)),
                             atol=2e-2)
  calls.clear()
  index = jnp.broadcast_to(jnp.arange(16)[::-1], (2, 16))   # a permuted row: no shortcut
  model(tokens(), segment_ids=segment, positions=index, indices=index)
  assert calls == [("cudnn", False)] * BF16.n_layers
