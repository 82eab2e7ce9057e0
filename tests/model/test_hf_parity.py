"""Logits of our model equal transformers.LlamaForCausalLM (fp32), both conversion directions.

Tolerance: the two implementations differ only in fp32 summation order; logits of a few-layer
random model are O(1), so 1e-4 absolute leaves two orders of magnitude above the ~1e-6 noise
while a wrong permutation, transposition or RoPE frequency gives errors of O(0.1).
"""

import numpy as np
import pytest
import transformers

# requirements-test.txt installs torch on Python 3.11 only (PyPI's Python 3.12 torch is the
# ~3 GB CUDA build); without it the reference cannot run.
torch = pytest.importorskip("torch", reason="torch is not installed (requirements-test.txt: "
                            "Python 3.11 only)")
from flax import nnx

from llama3_jax import hf
from llama3_jax.model import ModelConfig, RopeScaling, Transformer

TOL = 1e-4

CASES = {
    # name: (n_heads, n_kv_heads, rope scaling, tied embeddings)
    "mha_no_scaling": (4, 4, None, False),
    "gqa2_scaled": (6, 3, RopeScaling(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position=16), False),
    "gqa4_scaled_tied": (8, 2, RopeScaling(factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=2.0, original_max_position=12),
                         True),
    "gqa4_no_scaling_tied": (4, 1, None, True),
}


def tiny_config(n_heads, n_kv_heads, scaling, tied) -> ModelConfig:
  return ModelConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=n_heads,
                     n_kv_heads=n_kv_heads, head_dim=10, ffn_dim=72, rope_theta=500_000.0,
                     rope_scaling=scaling, max_seq_len=64, tie_embeddings=tied,
                     init_std=0.2)    # large weights: sharp attention, so RoPE errors show


def tokens(config, batch=3, length=41, seed=0):
  # Sequences (41) longer than the original context lengths (12, 16) exercise the scaling.
  return np.random.RandomState(seed).randint(0, config.vocab_size, (batch, length))


def torch_logits(model, tokens_bt):
  with torch.no_grad():
    return model(torch.from_numpy(tokens_bt)).logits.numpy()


@pytest.mark.parametrize("case", CASES)
def test_hf_to_ours(case, tmp_path):
  config = tiny_config(*CASES[case])
  torch.manual_seed(0)
  hf_config = transformers.LlamaConfig(**hf.config_to_hf(config, "float32"),
                                       attn_implementation="eager")
  reference = transformers.LlamaForCausalLM(hf_config).eval()
  # Random norm weights, so a norm loaded into the wrong place shows.
  with torch.no_grad():
    for name, p in reference.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  reference.save_pretrained(tmp_path)

  loaded_config, model = hf.load(tmp_path)
  assert loaded_config == config
  tokens_bt = tokens(config)
  ours = np.asarray(model(tokens_bt))
  theirs = torch_logits(reference, tokens_bt)
  assert ours.dtype == np.float32
  assert np.abs(ours - theirs).max() <= TOL


@pytest.mark.parametrize("case", CASES)
def test_ours_to_hf(case, tmp_path):
  config = tiny_config(*CASES[case])
  model = Transformer(config, rngs=nnx.Rngs(1))
  hf.save(model, config, tmp_path / "export")
  reference = transformers.LlamaForCausalLM.from_pretrained(
      tmp_path / "export", attn_implementation="eager", dtype=torch.float32).eval()
  tokens_bt = tokens(config, seed=1)
  diff = np.abs(np.asarray(model(tokens_bt)) - torch_logits(reference, tokens_bt)).max()
  assert diff <= TOL
