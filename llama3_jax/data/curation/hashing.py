"""Stable hashes and tokens shared by the curation stages.

Every hash here is a pure function of the bytes (blake2b and fixed 64-bit constants),
never Python's salted `hash`, so results agree across processes, runs and machines. Words are
hashed once per document; n-gram, shingle and bucket hashes are then numpy arithmetic on those.
"""

import hashlib
import re

import numpy as np

WORD_RE = re.compile(r"\w+")
_P = np.uint64(0x100000001B3)                        # FNV's 64-bit prime: odd
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))  # its inverse mod 2**64
# Odd 64-bit constants (from splitmix64 / xxhash) that weight the positions of an n-gram.
_POSITION_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
     0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
     0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB,
     0x8EBC6AF09C88C6E3, 0x589965CC75374CC3, 0x1D8E4E27C47D124F, 0xEB44ACCAB455D165],
    dtype=np.uint64)


def words(text: str) -> list[str]:
  """Lower-cased word tokens: runs of Unicode letters, digits and underscores."""
  return WORD_RE.findall(text.lower())


def hash_words(tokens: list[str]) -> np.ndarray:
  """A 64-bit hash of each token's UTF-8 bytes, all tokens at once. (W,) uint64.

  The tokens are joined with NULs (never inside a \\w token) and encoded once; token t's hash
  is the polynomial hash sum_j byte_j * P**j of its bytes (mod 2**64), read off prefix sums as
  (S[end] - S[start]) * P**-(start+1) (P is odd, so invertible mod 2**64), then mixed. A Python
  loop calling a hash per word costs ~5x more.
  """
  if not tokens:
    return np.zeros(0, np.uint64)
  buf = np.frombuffer(("\x00".join(tokens) + "\x00").encode("utf-8"), np.uint8)   # (L,)
  powers = np.cumprod(np.full(len(buf), _P, np.uint64))                           # P**1..P**L
  prefix = np.zeros(len(buf) + 1, np.uint64)
  np.cumsum(buf * powers, out=prefix[1:])                                         # S[i]
  ends = np.flatnonzero(buf == 0)                                                 # (W,)
  starts = np.r_[0, ends[:-1] + 1]
  inverse = np.cumprod(np.full(len(buf), _P_INV, np.uint64))                      # P**-1..
  return mix64((prefix[ends] - prefix[starts]) * inverse[starts])


def hash_string(s: str) -> int:
  """A 64-bit hash of a string, for URLs and lines (collisions ~ n**2 / 2**65)."""
  return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"),
                                        digest_size=8).digest(), "little")


def mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: spreads every input bit over the 64 output bits (uint64 -> uint64)."""
  x = x.astype(np.uint64, copy=True)
  x ^= x >> np.uint64(30)
  x *= np.uint64(0xBF58476D1CE4E5B9)
  x ^= x >> np.uint64(27)
  x *= np.uint64(0x94D049BB133111EB)
  x ^= x >> np.uint64(31)
  return x


def ngram_hashes(h: np.ndarray, n: int) -> np.ndarray:
  """Hashes of the len(h) - n + 1 consecutive n-grams of the token hashes `h`. (W-n+1,) uint64.

  An n-gram is the position-weighted sum of its token hashes (wrapping uint64 arithmetic),
  mixed; equal n-grams give equal hashes and distinct ones collide with probability ~2**-64.
  """
  count = len(h) - n + 1
  if count <= 0:
    return np.zeros(0, np.uint64)
  acc = np.zeros(count, np.uint64)
  for j in range(n):
    acc += h[j:j + count] * _POSITION_MULTIPLIERS[j % len(_POSITION_MULTIPLIERS)]
  return mix64(acc)


def char_codes(text: str) -> np.ndarray:
  """Unicode code points of `text` as uint64 (one per character)."""
  return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.uint64)
