"""Test setup: 8 fake CPU devices and fp32 matmuls, fixed before JAX is imported."""

import os
import tempfile

# Tiny models compile for much longer than they run: LLVM's optimisation level 0 cuts XLA:CPU
# compile time ~5x (e.g. 6.6 s -> 1.1 s for a sharded init) at no cost to what tests check.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The embedded corpus is built once per test session, never read from the user's cache.
os.environ["LLAMA3_JAX_CACHE"] = tempfile.mkdtemp(prefix="llama3_jax_test_cache.")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402

from llama3_jax.data import corpus  # noqa: E402
from llama3_jax.data.tokenizers import load_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_path():
  """The embedded corpus' SentencePiece tokenizer (it has Llama 3's chat tokens)."""
  return corpus.embedded_corpus() / "tokenizer.model"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
  return load_tokenizer(tokenizer_path)
