"""MinHash signatures and LSH-banded near-duplicate clustering (report §3.1.1, "document-level").

A document's shingles are its word n-grams, hashed once (hashing.ngram_hashes) and reduced
modulo the prime P = 2**32 - 5. Permutation i maps a shingle x to (a_i * x + b_i) mod P with
a_i, b_i < P drawn from `seed`; a_i * x + b_i < 2**64, so the arithmetic is exact in uint64 and
a signature entry fits uint32. Two signatures agree at a position with probability equal to
the documents' Jaccard similarity, so the fraction of agreeing positions estimates it.

Clustering: the signature is cut into `bands` bands of `num_perms / bands` rows; documents with
an identical band land in one bucket and become candidates. A candidate is joined to its
bucket's first member only if their estimated Jaccard reaches `threshold` (members that fail
form a sub-bucket and try again), and clusters are the connected components of the verified
pairs, computed with vectorised min-label propagation (a union-find in numpy). The first
document of each cluster is kept. Memory: the (docs, num_perms) uint32 signature matrix.
"""

import numpy as np

from llama3_jax.data.curation.hashing import mix64, ngram_hashes

PRIME = np.uint64((1 << 32) - 5)     # the largest prime below 2**32
NO_SHINGLES = np.iinfo(np.uint32).max
_CHUNK = 4096                        # shingles per (chunk, num_perms) uint64 block


def permutations(num_perms: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The (a, b) coefficients of the hash permutations. Each (num_perms,) uint64."""
  rng = np.random.default_rng(seed)
  a = rng.integers(1, int(PRIME), num_perms, dtype=np.uint64)
  b = rng.integers(0, int(PRIME), num_perms, dtype=np.uint64)
  return a, b


def shingles(word_hashes: np.ndarray, size: int) -> np.ndarray:
  """Distinct shingle hashes in [0, P) of a document; a short document is one shingle."""
  if len(word_hashes) == 0:
    return np.zeros(0, np.uint64)
  grams = ngram_hashes(word_hashes, min(size, len(word_hashes)))
  return np.unique(grams % PRIME)


def signature(shingle_hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """MinHash signature (num_perms,) uint32; all NO_SHINGLES for a document without shingles."""
  sig = np.full(len(a), NO_SHINGLES, np.uint64)
  for start in range(0, len(shingle_hashes), _CHUNK):
    x = shingle_hashes[start:start + _CHUNK, None]                 # (S, 1)
    np.minimum(sig, ((a[None, :] * x + b[None, :]) % PRIME).min(axis=0), out=sig)   # (P,)
  return sig.astype(np.uint32)


def similarity(sig_x: np.ndarray, sig_y: np.ndarray) -> np.ndarray:
  """Estimated Jaccard of row pairs: fraction of equal positions. (N, P), (N, P) -> (N,)."""
  return (sig_x == sig_y).mean(axis=1)


def cluster_keep(sigs: np.ndarray, bands: int, threshold: float) -> np.ndarray:
  """Which rows of `sigs` (N, P) uint32 to keep: the first of each near-duplicate cluster."""
  n = len(sigs)
  src, dst = [], []
  for key in band_keys(sigs, bands):
    u, v = verified_pairs(sigs, key, threshold)
    src.append(u)
    dst.append(v)
  label = components(n, np.concatenate(src), np.concatenate(dst))
  return label == np.arange(n)


def band_keys(sigs: np.ndarray, bands: int) -> np.ndarray:
  """One 64-bit key per band of each signature: equal bands, equal keys. (bands, N) uint64."""
  n, p = sigs.shape
  rows = p // bands
  keys = np.zeros((bands, n), np.uint64)
  for band in range(bands):
    block = sigs[:, band * rows:(band + 1) * rows].astype(np.uint64)      # (N, R)
    keys[band] = mix64(block @ np.arange(1, 2 * rows, 2, dtype=np.uint64) + np.uint64(band))
  return keys


def verified_pairs(sigs, key, threshold):
  """Pairs (first member, member) of rows within equal-key buckets whose similarity is >=
  threshold; rows are in document order (the first of a bucket is its smallest row)."""
  order = np.argsort(key, kind="stable")        # equal keys keep document order
  idx, k = order, key[order]
  src, dst = [], []
  while len(idx) > 1:
    starts = np.r_[True, k[1:] != k[:-1]]
    sizes = np.diff(np.r_[np.flatnonzero(starts), len(k)])
    in_group = np.repeat(sizes > 1, sizes)       # drop buckets of one document
    idx, k, starts = idx[in_group], k[in_group], starts[in_group]
    if len(idx) == 0:
      break
    first = idx[np.flatnonzero(starts)[np.cumsum(starts) - 1]]     # each row's bucket head
    member = ~starts
    ok = np.zeros(len(idx), bool)
    for lo in range(0, len(idx), _CHUNK):        # bounded (chunk, P) comparisons
      sl = slice(lo, lo + _CHUNK)
      ok[sl] = similarity(sigs[first[sl]], sigs[idx[sl]]) >= threshold
    ok &= member
    src.append(first[ok])
    dst.append(idx[ok])
    retry = member & ~ok                         # failed members form a sub-bucket
    idx, k = idx[retry], k[retry]
  if not src:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(src), np.concatenate(dst)


def components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Connected components of edges (u, v) over n nodes: each node's smallest member. (n,) int64."""
  label = np.arange(n)
  if len(u) == 0:
    return label
  while True:
    low = np.minimum(label[u], label[v])
    new = label.copy()
    np.minimum.at(new, u, low)
    np.minimum.at(new, v, low)
    while True:                                  # pointer jumping: follow labels to the root
      jumped = new[new]
      if np.array_equal(jumped, new):
        break
      new = jumped
    if np.array_equal(new, label):
      return label
    label = new
