"""Shared fixtures: the embedded corpus' tokenizer (it has the chat tokens) and a tiny model."""

import pytest

from llama3_jax.data import corpus
from llama3_jax.data.tokenizers import load_tokenizer
from llama3_jax.model import ModelConfig

# 4 query heads on 2 KV heads (GQA); odd sizes catch shape mix-ups.
TINY = ModelConfig(vocab_size=512, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=6,
                   ffn_dim=40, max_seq_len=128, init_std=0.2)


@pytest.fixture(scope="session")
def tokenizer_path():
  return corpus.embedded_corpus() / "tokenizer.model"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
  return load_tokenizer(tokenizer_path)
