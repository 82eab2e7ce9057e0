"""The per-file work of each streaming pass; run in worker processes, one task per input file.

Each function reads one file with `reader.read_docs` and returns compact per-document arrays
(hashes, signatures, scores), never texts, except `write_file`, which writes the kept documents.
Read-only state (config, models, the corpus word distribution) is installed once per worker
by `init_worker`.
"""

import dataclasses
import json
import math
import os
import pathlib

import numpy as np

from llama3_jax.data.curation import filters, lines, minhash
from llama3_jax.data.curation.config import CurationConfig
from llama3_jax.data.curation.hashing import hash_string, hash_words, words
from llama3_jax.data.curation.langid import LangId
from llama3_jax.data.curation.quality import QualityModel
from llama3_jax.data.curation.reader import ReadReport, parse_timestamp, read_docs

_STATE: dict = {}


def init_worker(cfg: CurationConfig, log_q: np.ndarray | None = None):
  """Installs the read-only state of a pass in this process (models are loaded here)."""
  _STATE.clear()
  _STATE["cfg"] = cfg
  _STATE["perms"] = minhash.permutations(cfg.minhash.num_perms, cfg.minhash.seed)
  f = cfg.filters
  _STATE["dirty"] = filters.DirtyWords.load(f.dirty_words_path) if f.dirty_words_path else None
  _STATE["log_q"] = log_q
  _STATE["langid"] = LangId.load(cfg.langid.model_path) if cfg.langid.model_path else None
  _STATE["quality"] = (QualityModel.load(cfg.quality.model_path) if cfg.quality.model_path
                       else None)


def ensure_worker(cfg: CurationConfig, log_q_path: str | None = None):
  """`init_worker` unless this process already holds the state of this config (and corpus
  distribution): a staged run's tasks call it before each unit, models load once."""
  key = (cfg, log_q_path)
  if _STATE.get("key") != key:
    init_worker(cfg, np.load(log_q_path) if log_q_path else None)
    _STATE["key"] = key


def any_filter(cfg: CurationConfig) -> bool:
  """Whether any stage after line dedup is on (the score pass has work)."""
  f = cfg.filters
  return bool(f.dup_ngrams or f.dirty_words_path or f.kl_enabled or cfg.langid.model_path
              or cfg.quality.model_path)


@dataclasses.dataclass
class ScanResult:
  """Pass 1 of one file: what URL dedup, MinHash and the corpus word distribution need."""
  report: ReadReport
  empty: np.ndarray          # (n,) bool: text is blank
  url_hash: np.ndarray       # (n,) uint64 (0 without a URL)
  has_url: np.ndarray        # (n,) bool
  timestamp: np.ndarray      # (n,) float64, NaN without one
  bad_timestamps: int        # present but unparseable
  signatures: np.ndarray     # (n, num_perms) uint32, or (n, 0) when MinHash is off
  has_shingles: np.ndarray   # (n,) bool
  kl_ids: np.ndarray         # distinct corpus-distribution buckets of the file's words
  kl_counts: np.ndarray      # and their counts


def scan_file(path: str) -> ScanResult:
  cfg = _STATE["cfg"]
  a, b = _STATE["perms"]
  report = ReadReport(path)
  empty, url_hash, has_url, stamp, sigs, has_sh = [], [], [], [], [], []
  bad_stamps = 0
  kl = _Counts(cfg.filters.kl_buckets) if cfg.filters.kl_enabled else None
  for doc in read_docs(pathlib.Path(path), cfg.read, report):
    empty.append(not doc.text.strip())
    url = doc.record.get(cfg.read.url_field)
    url = url.strip().split("#", 1)[0] if isinstance(url, str) else ""
    has_url.append(bool(url))
    url_hash.append(hash_string(url) if url else 0)
    t = parse_timestamp(doc.record, cfg.read.timestamp_fields)
    bad_stamps += t is not None and math.isnan(t)
    stamp.append(math.nan if t is None else t)
    h = hash_words(words(doc.text))
    if cfg.minhash.enabled:
      sh = minhash.shingles(h, cfg.minhash.shingle_size)
      sigs.append(minhash.signature(sh, a, b))
      has_sh.append(len(sh) > 0)
    if kl is not None:
      kl.add(filters.kl_buckets(h, cfg.filters.kl_buckets))
  n = report.docs
  ids, counts = kl.sparse() if kl is not None else (np.zeros(0), np.zeros(0))
  return ScanResult(
      report, np.array(empty, bool), np.array(url_hash, np.uint64), np.array(has_url, bool),
      np.array(stamp, np.float64), bad_stamps,
      # (n, num_perms) even for a file with no documents, so that files concatenate.
      np.array(sigs, np.uint32).reshape(n, cfg.minhash.num_perms if cfg.minhash.enabled else 0),
      np.array(has_sh, bool),
      ids.astype(np.int64), counts.astype(np.int64))


class _Counts:
  """Word-bucket counts of a file: ids buffered and folded into a dense array every ~1M."""

  def __init__(self, buckets: int):
    self.dense = np.zeros(buckets, np.int64)
    self.buffer, self.buffered = [], 0

  def add(self, ids: np.ndarray):
    self.buffer.append(ids)
    self.buffered += len(ids)
    if self.buffered > 1 << 20:
      self._fold()

  def _fold(self):
    if self.buffer:
      self.dense += np.bincount(np.concatenate(self.buffer), minlength=len(self.dense))
    self.buffer, self.buffered = [], 0

  def sparse(self) -> tuple[np.ndarray, np.ndarray]:
    self._fold()
    ids = np.flatnonzero(self.dense)
    return ids, self.dense[ids]


def line_file(path: str, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pass 2: distinct line hashes of the alive documents, concatenated, and their lengths."""
  parts = [lines.distinct_lines(doc.text) for doc in _alive_docs(path, alive)]
  sizes = np.array([len(p) for p in parts], np.int64)
  return (np.concatenate(parts) if parts else np.zeros(0, np.uint64)), sizes


@dataclasses.dataclass
class ScoreResult:
  """Pass 3 of one file: per alive document, line removal and filter scores (NaN = not run)."""
  emptied: np.ndarray        # (n,) bool: nothing left after line removal
  lines_removed: int
  dup_ngram: np.ndarray      # (n,) bool: over a duplicated n-gram limit
  dirty: np.ndarray          # (n,) float
  kl: np.ndarray             # (n,) float
  lang_ok: np.ndarray        # (n,) bool
  quality: np.ndarray        # (n,) float


def score_file(path: str, alive: np.ndarray, bucket: np.ndarray, frequent: dict) -> ScoreResult:
  cfg, f = _STATE["cfg"], _STATE["cfg"].filters
  n = len(alive)
  emptied, dup = np.zeros(n, bool), np.zeros(n, bool)
  dirty, kl, quality = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
  lang_ok = np.ones(n, bool)
  removed = 0
  for doc in _alive_docs(path, alive):
    i = doc.index
    text, r = _dedup_lines(doc.text, bucket[i], frequent)
    removed += r
    if not text.strip():
      emptied[i] = True
      continue
    tokens = words(text)
    h = hash_words(tokens)
    if f.dup_ngrams:
      lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
      dup[i] = filters.failed_dup_ngram(h, lengths, f.dup_ngrams)
    if _STATE["dirty"] is not None:
      dirty[i] = _STATE["dirty"].fraction(h)
    if f.kl_enabled and len(tokens) >= f.kl_min_words:
      kl[i] = filters.doc_kl(filters.kl_buckets(h, f.kl_buckets), _STATE["log_q"])
    if _STATE["langid"] is not None:
      lang, prob = _STATE["langid"].predict(text)
      lang_ok[i] = lang in cfg.langid.allowed and prob >= cfg.langid.min_prob
    if _STATE["quality"] is not None:
      quality[i] = _STATE["quality"].score(text)
  return ScoreResult(emptied, removed, dup, dirty, kl, lang_ok, quality)


def write_file(path: str, out_path: str, keep: np.ndarray, bucket: np.ndarray,
               frequent: dict) -> int:
  """Pass 4: writes the kept documents (line-deduplicated) as JSONL; returns how many."""
  text_field = _STATE["cfg"].read.text_field
  out = pathlib.Path(out_path)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  written = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for doc in _alive_docs(path, keep):
      text, _ = _dedup_lines(doc.text, bucket[doc.index], frequent)
      record = doc.record if text == doc.text else {**doc.record, text_field: text}
      f.write(_dumps(record) + "\n")
      written += 1
  os.replace(tmp, out)     # a crash never leaves a half-written file under the final name
  return written


def _dumps(record: dict) -> str:
  """Compact UTF-8 JSON, but with the characters `str.splitlines` (and JavaScript) treat as line
  breaks escaped, so every consumer sees one document per line."""
  out = json.dumps(record, ensure_ascii=False)
  for ch in _LINE_BREAKS:
    out = out.replace(ch, f"\\u{ord(ch):04x}") if ch in out else out
  return out


_LINE_BREAKS = "\x85\u2028\u2029"   # json.dumps already escapes the C0 controls


def _alive_docs(path, alive):
  report = ReadReport(path)   # skips were counted (or raised) by the first pass
  for doc in read_docs(pathlib.Path(path), _STATE["cfg"].read, report):
    if doc.index >= len(alive):
      raise RuntimeError(f"{path} changed during curation (more documents than the first pass)")
    if alive[doc.index]:
      yield doc


def _dedup_lines(text: str, bucket: int, frequent: dict) -> tuple[str, int]:
  if bucket < 0 or bucket not in frequent:
    return text, 0
  return lines.remove_lines(text, frequent[bucket])
