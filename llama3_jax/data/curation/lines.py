"""Line-level de-duplication (report §3.1.1): boilerplate lines that recur across documents.

Documents are cut into consecutive buckets of `bucket_docs` (in input order, after the
document-level stages); a line is removed from every document of its bucket when more than
`max_count` documents of the bucket contain it. Lines are compared after stripping whitespace,
by a 64-bit hash, and counted once per document (repetition inside one document is the
duplicated-n-gram filter's job). Blank lines are never counted or removed. Memory: one
bucket's line hashes (8 bytes a line) while it is counted, then only its frequent hashes.
"""

import numpy as np

from llama3_jax.data.curation.hashing import hash_string


def line_hashes(text: str) -> tuple[np.ndarray, np.ndarray]:
  """Hashes of a document's stripped lines and which lines are blank. (lines,) uint64, bool."""
  lines = [line.strip() for line in text.split("\n")]
  blank = np.fromiter((not line for line in lines), bool, len(lines))
  h = np.fromiter((hash_string(line) if line else 0 for line in lines), np.uint64, len(lines))
  return h, blank


def distinct_lines(text: str) -> np.ndarray:
  """The distinct non-blank line hashes of a document (what a bucket counts). Sorted uint64."""
  h, blank = line_hashes(text)
  return np.unique(h[~blank])


class BucketCounter:
  """Counts line hashes bucket by bucket, fed documents in order; keeps the frequent sets."""

  def __init__(self, bucket_docs: int, max_count: int):
    self.bucket_docs, self.max_count = bucket_docs, max_count
    self.frequent: list[np.ndarray] = []   # per bucket: sorted hashes seen in > max_count docs
    self._parts: list[np.ndarray] = []
    self._docs = 0

  def add(self, doc_lines: np.ndarray):
    self._parts.append(doc_lines)
    self._docs += 1
    if self._docs == self.bucket_docs:
      self.close_bucket()

  def close_bucket(self):
    if self._docs == 0:
      return
    h = np.concatenate(self._parts) if self._parts else np.zeros(0, np.uint64)
    values, counts = np.unique(h, return_counts=True)
    self.frequent.append(values[counts > self.max_count])
    self._parts, self._docs = [], 0


def remove_lines(text: str, frequent: np.ndarray) -> tuple[str, int]:
  """`text` without its lines whose hash is in `frequent` (sorted); also how many went."""
  if len(frequent) == 0:
    return text, 0
  h, blank = line_hashes(text)
  pos = np.minimum(np.searchsorted(frequent, h), len(frequent) - 1)
  drop = (frequent[pos] == h) & ~blank
  if not drop.any():
    return text, 0
  kept = [line for line, d in zip(text.split("\n"), drop) if not d]
  return "\n".join(kept), int(drop.sum())

