"""Contamination: planted overlaps are found at their fractions, clean examples score 0."""

import numpy as np
import pytest

from llama3_jax.eval.contamination import NgramIndex, contamination_report


@pytest.fixture(scope="module")
def corpus_docs():
  rng = np.random.default_rng(0)
  return [rng.integers(0, 50_000, rng.integers(50, 400)) for _ in range(300)]


@pytest.fixture(scope="module")
def index(corpus_docs):
  index = NgramIndex(sum(d.size for d in corpus_docs), n=8, false_positive_rate=1e-6)
  for doc in corpus_docs:
    index.add(doc)
  return index


def test_planted_overlaps_are_found_at_their_fractions(index, corpus_docs):
  rng = np.random.default_rng(1)
  for fraction in (0.0, 0.25, 0.5, 1.0):
    example = rng.integers(50_000, 100_000, 40)   # tokens the corpus never has
    planted = int(40 * fraction)
    example[:planted] = corpus_docs[7][10:10 + planted]   # a copied span of the corpus
    expected = planted / 40 if planted >= 8 else 0.0      # spans shorter than 8 do not count
    assert index.coverage(example) == pytest.approx(expected)


def test_clean_examples_score_zero_and_the_rate_is_as_stated(index):
  rng = np.random.default_rng(2)
  clean = [rng.integers(0, 50_000, 60) for _ in range(200)]
  assert max(index.coverage(e) for e in clean) == 0
  assert index.false_positive_rate < 2e-6   # sized for 1e-6 at this many n-grams
  lookups = np.concatenate([index.contains(e) for e in clean])
  assert lookups.mean() < 1e-4


def test_report_gain_and_interval():
  scores = np.r_[np.ones(30), np.zeros(70)]
  correct = np.r_[np.ones(30), np.zeros(35), np.ones(35)]   # contaminated ones all right
  (row,) = contamination_report(scores, correct, thresholds=(0.5,), bootstrap=200)
  assert row["contaminated_share"] == pytest.approx(0.3) and row["clean_n"] == 70
  assert row["gain"] == pytest.approx(0.65 - 0.5)
  assert row["gain_ci"][0] < row["gain"] < row["gain_ci"][1]


@pytest.mark.slow
def test_prepared_corpus_is_indexed_and_its_text_found(tmp_path):
  from llama3_jax.data import corpus
  from llama3_jax.data.prepare import read_manifest
  import grain
  data = corpus.embedded_corpus()
  index = NgramIndex.from_prepared(data, sources=["math"])
  manifest = read_manifest(data)
  shard = manifest["sources"]["math"]["shards"][0]
  doc = np.frombuffer(grain.sources.ArrayRecordDataSource([str(data / shard)])[3], "<i4")
  assert index.coverage(doc[:64]) == 1.0
  with pytest.raises(ValueError, match="is not prepared pre-training data"):
    NgramIndex.from_prepared(tmp_path)
