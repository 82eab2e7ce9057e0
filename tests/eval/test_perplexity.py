"""Held-out rows pack documents with masks; the held-out loss is the model's next-token loss;
the held-out split never shares a document with the training corpus, which it leaves as it was.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llama3_jax.data import corpus
from llama3_jax.eval import perplexity
from llama3_jax.model import Transformer
from llama3_jax.scaling import family


def test_pack_rows_keeps_documents_apart_and_masks_padding():
  docs = [np.arange(1, 8), np.arange(10, 14), np.arange(20, 32)]   # 7, 4 and 12 tokens
  rows = perplexity.pack_rows(docs, seq_len=8, rows=3)
  # Pairs: 6 + 3 + 11 = 20 targets in 24 slots; the last 4 are padding.
  assert rows["loss_mask"].sum() == 20 and rows["loss_mask"][2, 4:].sum() == 0
  np.testing.assert_array_equal(rows["inputs"][0], [1, 2, 3, 4, 5, 6, 10, 11])
  np.testing.assert_array_equal(rows["targets"][0], [2, 3, 4, 5, 6, 7, 11, 12])
  np.testing.assert_array_equal(rows["segment_ids"][0], [1] * 6 + [2] * 2)
  np.testing.assert_array_equal(rows["positions"][0], [0, 1, 2, 3, 4, 5, 0, 1])
  # The second document goes on in the next row as a new segment, then the third.
  np.testing.assert_array_equal(rows["inputs"][1], [12, 20, 21, 22, 23, 24, 25, 26])
  assert rows["segment_ids"][1, 0] != rows["segment_ids"][1, 1]


def _model(seed=0):
  return Transformer(family.family_config(15_000), rngs=nnx.Rngs(seed))


def test_loss_is_the_mean_next_token_nll_and_shapes_never_change():
  model = _model()
  docs = [np.random.RandomState(i).randint(3, 512, n) for i, n in enumerate((40, 70, 25))]
  rows = {"a": perplexity.pack_rows(docs, 32, 8), "b": perplexity.pack_rows(docs[:1], 32, 8)}
  for source in rows.values():
    source["bytes"] = 100
  result = perplexity.evaluate(model, rows, batch_rows=4)
  nll = tokens = 0.0
  for source in rows.values():
    logits = model(jnp.asarray(source["inputs"]), segment_ids=jnp.asarray(source["segment_ids"]))
    logp = jax.nn.log_softmax(logits, -1)
    picked = -np.take_along_axis(np.asarray(logp), source["targets"][..., None], -1)[..., 0]
    nll += (picked * source["loss_mask"]).sum()
    tokens += source["loss_mask"].sum()
  assert result["loss"] == pytest.approx(nll / tokens, rel=1e-5)
  assert result["tokens"] == tokens == 132 + 39
  assert result["per_source"]["b"]["bits_per_byte"] == pytest.approx(
      result["per_source"]["b"]["loss"] * 39 / np.log(2) / 100, rel=1e-6)
  before = perplexity._nll_sums._cache_size()
  perplexity.evaluate(_model(1), rows, batch_rows=4)   # same shapes: no new program
  assert perplexity._nll_sums._cache_size() == before


@pytest.mark.slow   # builds the embedded corpus and its held-out split (~20-50 s)
def test_heldout_split_is_disjoint_and_leaves_the_corpus_unchanged():
  train_dir = corpus.embedded_corpus()
  before = {name: (train_dir / "raw" / f"{name}.jsonl").read_bytes()
            for name in ("general", "code", "math", "multilingual")}
  heldout_dir = corpus.embedded_heldout()
  manifest = json.loads((heldout_dir / "manifest.json").read_text())
  assert manifest["tokenizer"]["path"] == str(train_dir / "tokenizer.model")
  assert set(manifest["sources"]) == set(before)
  for name, raw in before.items():
    assert (train_dir / "raw" / f"{name}.jsonl").read_bytes() == raw
    assert [t for t in corpus.math_documents()[:3]] == corpus.math_documents()[:3]
    train = {json.loads(line)["text"] for line in raw.decode().splitlines()}
    held = [json.loads(line)["text"]
            for line in (heldout_dir / "raw" / f"{name}.jsonl").read_text().splitlines()]
    assert len(held) > 50 and not train & set(held), name
  rows = perplexity.heldout_rows(heldout_dir, seq_len=64, rows_per_source=16)
  for name, source in rows.items():
    assert source["inputs"].shape == (16, 64) and source["loss_mask"].mean() > 0.99, name
    assert source["bytes"] > 16 * 64, name   # more than a byte per token
