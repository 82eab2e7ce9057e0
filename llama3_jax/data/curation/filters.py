"""Heuristic document filters (report §3.1.1, "heuristic filtering"), scores per document.

- Duplicated n-grams (Gopher, Rae et al. 2021): the fraction of a document's word characters
  that lie inside word n-grams occurring more than once in it; overlapping repeats count once.
  Catches logging / error output and other repetitive text.
- Dirty words (Raffel et al. 2020): the fraction of words covered by entries of a user word
  list (an entry may be a phrase of several words). Catches adult sites block lists miss.
- Token-distribution KL: KL(p_doc || q_corpus) in nats, where p_doc is the document's empirical
  word unigram distribution and q_corpus the corpus's, counted over a hashed vocabulary of
  `kl_buckets` in the first streaming pass. Documents full of tokens the corpus rarely uses
  (another alphabet, random bytes, tables of ids) score high.

Why this smoothing: p_doc needs none (its zero entries add nothing to the sum, and its non-zero
entries are words the corpus pass has counted). q_corpus gets add-one (Laplace) counts over the
hashed vocabulary, q = (c + 1) / (N + V), so that a word the corpus model has not seen, e.g.
when q was counted on other documents, costs a large but finite log((N + V) / 1) instead of
infinity. An epsilon instead would make that cost arbitrary and let a single unseen word
dominate the score; with add-one it is about the cost of a word seen once. The smoothing mass
V / (N + V) is negligible for real corpora (N >> V = 2**20) and only flattens q, uniformly,
for toy ones. Short documents score higher (their p_doc is peaked), hence `kl_min_words`.
"""

import numpy as np

from llama3_jax.data.curation.hashing import hash_words, mix64, ngram_hashes, words


def dup_ngram_fraction(word_hashes: np.ndarray, lengths: np.ndarray, n: int) -> float:
  """Fraction of word characters covered by word n-grams that occur more than once."""
  grams = ngram_hashes(word_hashes, n)                             # (W-n+1,)
  if len(grams) < 2 or lengths.sum() == 0:
    return 0.0
  _, inverse, counts = np.unique(grams, return_inverse=True, return_counts=True)
  repeated = (counts[inverse] > 1).astype(np.int32)                # by start word
  covered = np.convolve(repeated, np.ones(n, np.int32)) > 0        # (W,) word in a repeat
  return float(lengths[covered].sum() / lengths.sum())


def failed_dup_ngram(word_hashes, lengths, limits) -> bool:
  """True if any (n, max_fraction) of `limits` is exceeded.

  The fraction can only fall as n grows (a repeated (n+1)-gram is two repeated n-grams over the
  same words), so a document under every limit at the smallest n needs no other n: one
  np.unique for most documents instead of six.
  """
  limits = sorted(limits)
  first = dup_ngram_fraction(word_hashes, lengths, limits[0][0])
  if first <= min(limit for _, limit in limits):
    return False
  return first > limits[0][1] or any(
      dup_ngram_fraction(word_hashes, lengths, n) > limit for n, limit in limits[1:])


class DirtyWords:
  """A word/phrase list turned into sets of n-gram hashes, by phrase length."""

  def __init__(self, entries: list[str]):
    by_len: dict[int, list[int]] = {}
    for entry in entries:
      tokens = words(entry)
      if tokens:
        h = ngram_hashes(hash_words(tokens), len(tokens))
        by_len.setdefault(len(tokens), []).append(int(h[0]))
    self.by_len = {n: np.unique(np.array(v, np.uint64)) for n, v in by_len.items()}

  @classmethod
  def load(cls, path: str) -> "DirtyWords":
    with open(path, encoding="utf-8") as f:
      return cls([line for line in f if line.strip() and not line.startswith("#")])

  def fraction(self, word_hashes: np.ndarray) -> float:
    """Fraction of the document's words inside a listed word or phrase."""
    if len(word_hashes) == 0:
      return 0.0
    covered = np.zeros(len(word_hashes), bool)
    for n, listed in self.by_len.items():
      grams = ngram_hashes(word_hashes, n)
      hit = np.isin(grams, listed).astype(np.int32)
      if hit.any():
        covered |= np.convolve(hit, np.ones(n, np.int32)) > 0
    return float(covered.mean())


def kl_buckets(word_hashes: np.ndarray, buckets: int) -> np.ndarray:
  """Hashed-vocabulary ids of the words. (W,) int64 in [0, buckets)."""
  return (mix64(word_hashes) % np.uint64(buckets)).astype(np.int64)


def log_corpus_distribution(counts: np.ndarray) -> np.ndarray:
  """log q with add-one smoothing from corpus counts per bucket. (V,) float32."""
  return np.log((counts + 1.0) / (counts.sum() + len(counts))).astype(np.float32)


def doc_kl(ids: np.ndarray, log_q: np.ndarray) -> float:
  """KL(p_doc || q) in nats for a document's bucket ids."""
  if len(ids) == 0:
    return 0.0
  u, c = np.unique(ids, return_counts=True)
  p = c / c.sum()
  return float(np.sum(p * (np.log(p) - log_q[u])))
