"""Hugging Face checkpoint files: sharded round trips, streaming memory, saving from a sharded
model, clear errors."""

import json
import math
import tracemalloc

import jax
import numpy as np
import pytest
import transformers
from flax import nnx

from llama3_jax import hf
from llama3_jax.model import ModelConfig, Transformer

# requirements-test.txt installs torch on Python 3.11 only (its CPU build lies on this machine's
# disk; PyPI's Python 3.12 torch is the ~3 GB CUDA build).
NO_TORCH = "torch is not installed (requirements-test.txt: Python 3.11 only)"

CONFIG = ModelConfig(vocab_size=89, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2,
                     head_dim=6, ffn_dim=56, max_seq_len=32)


def params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.fixture
def model():
  return Transformer(CONFIG, rngs=nnx.Rngs(3))


def test_sharded_round_trip_is_exact(model, tmp_path):
  hf.save(model, CONFIG, tmp_path / "ckpt", max_shard_bytes=20_000)
  index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 3
  config, loaded = hf.load(tmp_path / "ckpt")
  assert config == CONFIG
  for a, b in zip(params(model), params(loaded), strict=True):
    np.testing.assert_array_equal(a, b)
  # transformers reads the sharded directory too.
  torch = pytest.importorskip("torch", reason=NO_TORCH)
  reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
  np.testing.assert_array_equal(reference.model.embed_tokens.weight.detach().numpy(),
                                nnx.state(model, nnx.Param)["embed_vd"][...])


def test_bf16_save_and_load(model, tmp_path):
  hf.save(model, CONFIG, tmp_path / "bf16", dtype="bfloat16")
  config, loaded = hf.load(tmp_path / "bf16", param_dtype="bfloat16")
  assert config.param_dtype == "bfloat16"
  assert all(p.dtype == jax.numpy.bfloat16 for p in params(loaded))
  for a, b in zip(params(model), params(loaded)):
    np.testing.assert_allclose(np.asarray(b, np.float32), a, rtol=1e-2, atol=1e-6)


def test_load_streams_without_a_second_host_copy(tmp_path):
  """Host memory while loading stays below one full copy of the model.

  tracemalloc sees numpy buffers. On CPU, JAX adopts some finished numpy buffers without
  copying, so the traced peak counts the parameters adopted so far plus the one being read
  (each parameter's host parts are dropped once it is on its devices): ~0.4-0.6 of the model
  here, while reading every tensor before handing any to JAX would peak at >= 1.0. (What each
  process reads of a sharded model: tests/checkpoint/.)
  """
  # Large enough (8 MB) that Python's own allocations while loading are noise.
  config = CONFIG.replace(vocab_size=2048, d_model=128, n_layers=8, head_dim=32, ffn_dim=384)
  model = Transformer(config, rngs=nnx.Rngs(0))
  hf.save(model, config, tmp_path / "ckpt")
  model_bytes = sum(p.nbytes for p in params(model))
  assert max(p.nbytes for p in params(model)) < 0.25 * model_bytes
  tracemalloc.start()
  hf.load(tmp_path / "ckpt")
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert peak < 0.8 * model_bytes, (peak, model_bytes)


def test_save_refuses_to_overwrite(model, tmp_path):
  hf.save(model, CONFIG, tmp_path / "ckpt")
  with pytest.raises(FileExistsError, match="overwrite=True"):
    hf.save(model, CONFIG, tmp_path / "ckpt")
  hf.save(model, CONFIG, tmp_path / "ckpt", overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]   # no temporaries left


def test_clear_errors(model, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load(tmp_path)
  hf.save(model, CONFIG, tmp_path / "ckpt")
  config_json = tmp_path / "ckpt" / "config.json"
  good = json.loads(config_json.read_text())

  config_json.write_text(json.dumps({**good, "intermediate_size": 60}))
  with pytest.raises(ValueError, match="mlp.gate_proj.weight.*does not fit the config.json"):
    hf.load(tmp_path / "ckpt")

  config_json.write_text(json.dumps({**good, "num_hidden_layers": 5}))
  with pytest.raises(ValueError, match="model.layers.4.* is missing"):   # a UserError
    hf.load(tmp_path / "ckpt")

  config_json.write_text(json.dumps(good)[:40])
  with pytest.raises(ValueError, match="config.json is not valid JSON"):
    hf.load(tmp_path / "ckpt")
  config_json.write_text(json.dumps({k: v for k, v in good.items() if k != "hidden_size"}))
  with pytest.raises(ValueError, match="config.json lacks the field 'hidden_size'"):
    hf.load(tmp_path / "ckpt")
  weights = tmp_path / "ckpt" / "model.safetensors"
  whole = weights.read_bytes()
  weights.write_bytes(whole[:len(whole) // 2])
  config_json.write_text(json.dumps(good))
  with pytest.raises(ValueError, match="model.safetensors cannot be read.*truncated or corrupt"):
    hf.load(tmp_path / "ckpt")
  weights.write_bytes(whole)

  config_json.write_text(json.dumps({**good, "model_type": "mistral"}))
  with pytest.raises(ValueError, match="only Llama"):
    hf.load(tmp_path / "ckpt")

  (tmp_path / "ckpt" / "model.safetensors").unlink()
  config_json.write_text(json.dumps(good))
  with pytest.raises(FileNotFoundError, match="No \\*.safetensors files"):
    hf.load(tmp_path / "ckpt")


def test_a_sharded_model_saves_the_whole_models_bytes_one_layer_at_a_time(model, tmp_path,
                                                                          monkeypatch):
  """Saved from any layout, the files are the whole model's, byte for byte; what is gathered
  to the host at a time is one HF tensor (one layer of a stacked parameter), never a whole
  stacked parameter, let alone the model."""
  from llama3_jax.checkpoint.hf import weights
  from llama3_jax.sharding import MeshConfig, make_mesh
  hf.save(model, CONFIG, tmp_path / "whole", max_shard_bytes=20_000)
  gathered = []

  def recording(x, layer=None):
    part = original(x, layer)
    gathered.append(part.shape)
    return part
  original = weights.gathered
  monkeypatch.setattr(weights, "gathered", recording)
  for layout in (MeshConfig(fsdp=8), MeshConfig(data=2, fsdp=4)):
    _, sharded = hf.load(tmp_path / "whole", mesh=make_mesh(layout))
    assert any(not p.sharding.is_fully_replicated for p in params(sharded))
    hf.save(sharded, CONFIG, tmp_path / "sharded", max_shard_bytes=20_000, overwrite=True)
    files = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == files
    for file in files:
      assert ((tmp_path / "sharded" / file).read_bytes()
              == (tmp_path / "whole" / file).read_bytes())
  stacked = {p.shape for p in params(model) if p.shape[0] == CONFIG.n_layers}
  assert gathered and not stacked & set(gathered)
  assert max(math.prod(s) for s in gathered) == CONFIG.vocab_size * CONFIG.d_model


def test_an_interrupted_save_leaves_nothing_behind(model, tmp_path, monkeypatch):
  """A save that fails midway (a full disk, a kill) leaves neither a half-written directory at
  the path nor its temporary beside it; an existing export stays as it was."""
  from llama3_jax.checkpoint.hf import weights
  hf.save(model, CONFIG, tmp_path / "ckpt")
  before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
  calls = []

  def failing(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise OSError(28, "No space left on device")
    return original(*args, **kwargs)
  original = weights.safetensors.numpy.save_file
  monkeypatch.setattr(weights.safetensors.numpy, "save_file", failing)
  for target, overwrite in ((tmp_path / "new", False), (tmp_path / "ckpt", True)):
    calls.clear()
    with pytest.raises(OSError, match="No space left"):
      hf.save(model, CONFIG, target, max_shard_bytes=20_000, overwrite=overwrite)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
  assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
