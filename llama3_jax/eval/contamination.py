"""Contamination of evaluation examples by the pre-training corpus (report §5.1.4, after Singh et
al. 2024): token 8-gram overlap, thresholds, and the performance gain it may explain.

    index = NgramIndex.from_prepared("data/", n=8, false_positive_rate=1e-6)   # streams shards
    scores = [index.coverage(ids) for ids in example_token_ids]                 # in [0, 1]
    report = contamination_report(scores, correct)                              # per threshold

An example's score is the fraction of its tokens that lie inside some 8-gram of the example that
occurs at least once in the corpus. The corpus' 8-grams go into a Bloom filter (a bit array and
k hashes, sized from the corpus' token count for the false-positive rate asked for): memory is
-ln(rate) / ln(2)^2 bits per corpus token (3.6 bytes at the default 1e-6, 2.4 at 1e-4), and a
lookup may say "seen" wrongly at the stated rate, never "unseen" wrongly. At 1e-6 an example of
100 tokens is wrongly marked with probability ~1e-4. At each threshold, the examples scoring
at or above it are "contaminated"; the report gives their share and the estimated gain: the
score on the whole set minus the score on the clean subset, with a bootstrap 95% interval.
"""

import math
import pathlib

import numpy as np

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


def _window_hashes(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Two 64-bit hashes of every n-gram of `ids` (polynomial, wrapping arithmetic)."""
  ids = np.asarray(ids, np.uint64) + np.uint64(1)
  if ids.size < n:
    return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
  windows = np.lib.stride_tricks.sliding_window_view(ids, n)
  out = []
  with np.errstate(over="ignore"):
    for mix in _MIX:
      powers = mix ** np.arange(n - 1, -1, -1, dtype=np.uint64)
      h = (windows * powers).sum(axis=1, dtype=np.uint64)
      h ^= h >> np.uint64(31)
      h *= np.uint64(0xBF58476D1CE4E5B9)
      h ^= h >> np.uint64(29)
      out.append(h)
  return out[0], out[1] | np.uint64(1)


class NgramIndex:
  """A Bloom filter of token n-grams."""

  def __init__(self, expected_ngrams: int, *, n: int = 8, false_positive_rate: float = 1e-6):
    if not 0 < false_positive_rate < 1:
      raise ValueError(f"false_positive_rate={false_positive_rate} must be in (0, 1)")
    expected = max(int(expected_ngrams), 1)
    self.n, self.target_rate = n, false_positive_rate
    self.bits = max(64, int(-expected * math.log(false_positive_rate) / math.log(2) ** 2))
    self.hashes = max(1, round(self.bits / expected * math.log(2)))
    self.array = np.zeros((self.bits + 7) // 8, np.uint8)
    self.added = 0

  def _positions(self, ids) -> np.ndarray:
    h1, h2 = _window_hashes(ids, self.n)
    with np.errstate(over="ignore"):
      k = np.arange(self.hashes, dtype=np.uint64)[:, None]
      return ((h1[None] + k * h2[None]) % np.uint64(self.bits)).astype(np.int64)   # [k, W]

  def add(self, ids) -> None:
    positions = self._positions(ids).ravel()
    np.bitwise_or.at(self.array, positions >> 3, (1 << (positions & 7)).astype(np.uint8))
    self.added += max(0, len(ids) - self.n + 1)

  def contains(self, ids) -> np.ndarray:
    """bool [W]: whether each n-gram of `ids` was (probably) added."""
    positions = self._positions(ids)
    if positions.shape[1] == 0:
      return np.zeros(0, bool)
    bits = (self.array[positions >> 3] >> (positions & 7)) & 1
    return bits.all(axis=0)

  @property
  def false_positive_rate(self) -> float:
    """The rate at the n-grams added so far: (1 - exp(-k added / bits))^k."""
    return (1 - math.exp(-self.hashes * self.added / self.bits)) ** self.hashes

  def coverage(self, ids) -> float:
    """The fraction of `ids` inside some n-gram that the index holds."""
    ids = np.asarray(ids)
    if ids.size == 0:
      return 0.0
    hit = self.contains(ids)
    covered = np.zeros(ids.size + 1, np.int64)
    for start in np.flatnonzero(hit):   # mark [start, start + n) via a difference array
      covered[start] += 1
      covered[start + self.n] -= 1
    return float((np.cumsum(covered)[:-1] > 0).mean())

  @classmethod
  def from_prepared(cls, data_dir, *, n: int = 8, false_positive_rate: float = 1e-6,
                    sources: list[str] | None = None) -> "NgramIndex":
    """The n-grams of prepared pre-training data (experiments.prepare_data's shards)."""
    import grain
    data_dir = pathlib.Path(data_dir)
    manifest = check_prepared(data_dir)
    names = sources or sorted(manifest["sources"])
    tokens = sum(manifest["sources"][s]["tokens"] for s in names)
    index = cls(tokens, n=n, false_positive_rate=false_positive_rate)
    for name in names:
      for shard in manifest["sources"][name]["shards"]:
        records = grain.sources.ArrayRecordDataSource([str(data_dir / shard)])
        for i in range(len(records)):
          index.add(np.frombuffer(records[i], dtype="<i4"))
    return index


def check_prepared(data_dir) -> dict:
  """The manifest of prepared pre-training data, or a clear error."""
  from llama3_jax.data.prepare import read_manifest
  try:
    return read_manifest(pathlib.Path(data_dir))
  except (FileNotFoundError, ValueError, KeyError) as error:
    raise ValueError(f"{data_dir} is not prepared pre-training data ({error}); give a "
                     "directory made by python -m experiments.prepare_data") from None


def contamination_report(scores, correct, *, thresholds=(0.2, 0.4, 0.6, 0.8),
                         bootstrap: int = 1000, seed: int = 0) -> list[dict]:
  """Per threshold: the contaminated share and the gain (whole-set score minus clean-subset
  score) with a bootstrap 95% interval; `correct` is 1/0 per example."""
  scores, correct = np.asarray(scores, float), np.asarray(correct, float)
  rng = np.random.default_rng(seed)
  samples = rng.integers(0, scores.size, (bootstrap, scores.size))
  out = []
  for t in thresholds:
    dirty = scores >= t
    clean = ~dirty
    gain = (correct.mean() - correct[clean].mean()) if clean.any() else float("nan")
    draws = []
    for idx in samples:
      c = clean[idx]
      if c.any():
        draws.append(correct[idx].mean() - correct[idx][c].mean())
    low, high = (np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"),) * 2)
    out.append({"threshold": t, "contaminated_share": float(dirty.mean()),
                "clean_n": int(clean.sum()), "gain": float(gain), "gain_ci": [float(low),
                                                                              float(high)]})
  return out
