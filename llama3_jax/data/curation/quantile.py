"""An exact quantile of values spread over many sorted files, in O(files) memory.

The KL filter drops documents above a quantile of every document's score; the scores lie in one
sorted array per input file (memory-mapped). `sorted_quantile` selects the two order
statistics numpy's default ("linear") quantile interpolates between, by bisecting on values:
each step counts the values at or below a candidate with one searchsorted per file, so no
process ever holds all scores, and the result is bit for bit `np.quantile` of their
concatenation.
"""

import numpy as np


def sorted_quantile(arrays, q: float) -> float:
  """np.quantile(concatenate(arrays), q) (its default "linear" method) of sorted float64
  arrays, by selecting two order statistics: memory O(len(arrays)), not O(elements)."""
  n = sum(len(a) for a in arrays)
  virtual = np.float64(n - 1) * np.float64(q)                 # numpy's "linear" index
  below = int(np.clip(np.floor(virtual), 0, n - 1))
  above = min(below + 1, n - 1)
  gamma = np.float64(virtual - np.floor(virtual))
  a, b = np.float64(_kth(arrays, below)), np.float64(_kth(arrays, above))
  diff = b - a
  return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)   # numpy's lerp


def _kth(arrays, k: int) -> float:
  """The k-th smallest (0-based) element of sorted float64 arrays, by bisecting on values in
  their order-preserving integer form: each step counts with one searchsorted per array."""
  lo = _ordered(min(float(a[0]) for a in arrays if len(a)))
  hi = _ordered(max(float(a[-1]) for a in arrays if len(a)))
  while lo < hi:                           # the smallest value with more than k at or below it
    mid = (lo + hi) // 2
    v = _float(mid)
    if sum(int(np.searchsorted(a, v, "right")) for a in arrays) > k:
      hi = mid
    else:
      lo = mid + 1
  return _float(lo)


def _ordered(x: float) -> int:
  i = int(np.float64(x).view(np.int64))
  return i if i >= 0 else -(i & 0x7FFF_FFFF_FFFF_FFFF)


def _float(t: int) -> float:
  return float(np.int64(t if t >= 0 else -t | -0x8000_0000_0000_0000).view(np.float64))
