"""The single-process reference of the curation pipeline: four streaming passes over the
input, decisions in between, in one process (and its pool). The staged pipeline (stages.py),
what `curate` runs, is tested to write the same bytes; this one holds every document's
signature at once, so it is for small corpora and tests.

  pass 1 (parallel, per file): URL hash + timestamp, MinHash signature, corpus word counts
          -> decide: empty texts, URL dedup, near-duplicate clusters; build q_corpus
  pass 2 (parallel, ordered): distinct line hashes of survivors -> frequent lines per bucket
  pass 3 (parallel, per file): line removal, then filter scores on the remaining text
          -> decide: emptied by line dedup, dup n-grams, dirty words, KL outliers, langid, quality
  pass 4 (parallel, per file): write the kept documents, one output file per input file

Memory in the main process, per input document: num_perms * 4 bytes of signature (512 B at
128 permutations, twice that while the matrix is assembled) + ~40 B of URL hash, timestamp,
flags and scores; plus one line-dedup bucket's line hashes (8 B a line) at a time, the
frequent-line sets and the corpus distribution (kl_buckets * 8 B). Texts are only ever held one
document at a time, in a worker. The near-duplicate stage is global (one signature matrix), so
it bounds what one run can take: ~1M documents per GB of RAM at 128 permutations; the staged
pipeline has no such bound.

A removed document is counted under the first stage that removes it, so
  input_lines = kept + sum(removed.values()) + sum(skipped_lines.values()).
"""

import contextlib
import dataclasses
import multiprocessing
import os
import pathlib

import numpy as np

from llama3_jax.data.curation import minhash, passes
from llama3_jax.data.curation.config import CurationConfig
from llama3_jax.data.curation.filters import log_corpus_distribution
from llama3_jax.data.curation.lines import BucketCounter
from llama3_jax.data.curation.reader import list_inputs
from llama3_jax.data.curation.pipeline import check_resources, output_paths
from llama3_jax.data.curation.stages import REMOVAL_STAGES, layout_free_config, write_stats

STAGES = REMOVAL_STAGES


def curate_in_memory(input_dir: str, out_dir: str, cfg: CurationConfig = CurationConfig()) -> dict:
  """Curates every *.jsonl(.gz) under `input_dir` into `out_dir`; returns (and writes) stats."""
  files = list_inputs(input_dir)
  outputs = output_paths(files, pathlib.Path(input_dir), pathlib.Path(out_dir))
  workers = max(1, min(cfg.workers or os.cpu_count() or 1, len(files)))
  check_resources(cfg)
  split = lambda x: [x[starts[i]:starts[i + 1]] for i in range(len(files))]   # noqa: E731
  with _pool(workers, cfg) as run:
    scans = list(run(passes.scan_file, [(str(p),) for p in files]))
    starts = np.cumsum([0] + [s.report.docs for s in scans])   # file i: starts[i]:starts[i+1]
    removed = dict.fromkeys(STAGES, 0)
    alive = ~np.concatenate([s.empty for s in scans])
    removed["empty"] = int((~alive).sum())
    if cfg.url_dedup.enabled:
      _drop(alive, _url_duplicates(scans, alive), removed, "url_dedup")
    if cfg.minhash.enabled:
      _drop(alive, _near_duplicates(scans, split(alive), cfg), removed, "minhash")
    log_q = _corpus_distribution(scans, cfg) if cfg.filters.kl_enabled else None
    reports = [s.report for s in scans]
    bad_timestamps = sum(s.bad_timestamps for s in scans)
    del scans                                            # signatures are no longer needed

    bucket = np.full(len(alive), -1, np.int32)
    frequent: list[np.ndarray] = []
    if cfg.line_dedup.enabled:
      bucket[alive] = np.arange(alive.sum()) // cfg.line_dedup.bucket_docs
      frequent = _frequent_lines(run, files, split(alive), cfg)
  per_file_frequent = [_frequent_for(b, frequent) for b in split(bucket)]

  lines_removed, kl_threshold = 0, None
  with _pool(workers, cfg, log_q) as run:
    if cfg.line_dedup.enabled or passes.any_filter(cfg):
      tasks = [(str(p), a, b, fr) for p, a, b, fr in
               zip(files, split(alive), split(bucket), per_file_frequent)]
      results = list(run(passes.score_file, tasks))
      lines_removed = sum(r.lines_removed for r in results)
      kl_threshold = _filter(alive, results, removed, cfg)
    tasks = [(str(p), str(o), k, b, fr) for p, o, k, b, fr in
             zip(files, outputs, split(alive), split(bucket), per_file_frequent)]
    written = sum(run(passes.write_file, tasks))
  if written != int(alive.sum()):
    raise RuntimeError(f"wrote {written} documents, expected {int(alive.sum())}: an input file "
                       "changed during curation")

  skipped: dict[str, int] = {}
  for r in reports:
    for reason, count in r.skipped.items():
      skipped[reason] = skipped.get(reason, 0) + count
  stats = {
      "input_lines": int(starts[-1]) + sum(skipped.values()),
      "kept": written,
      "removed": removed,
      "skipped_lines": skipped,
      "skipped_examples": [e for r in reports for e in r.examples][:100],
      "file_problems": [p for r in reports for p in r.file_problems],
      "blank_lines": sum(r.blank_lines for r in reports),
      "lines_removed": lines_removed,
      "bad_timestamps": bad_timestamps,
      "kl_threshold": kl_threshold,
      "line_dedup_buckets": len(frequent),
      "frequent_lines": int(sum(len(f) for f in frequent)),
      "files": len(files),
      "config": layout_free_config(cfg),
  }
  write_stats(pathlib.Path(out_dir) / "stats.json", stats)
  return stats


def _drop(alive, remove, removed, stage):
  remove &= alive
  alive &= ~remove
  removed[stage] += int(remove.sum())


def _url_duplicates(scans, alive) -> np.ndarray:
  """All but the newest (then first) alive document of each URL."""
  url = np.concatenate([s.url_hash for s in scans])
  has = np.concatenate([s.has_url for s in scans]) & alive
  stamp = np.concatenate([s.timestamp for s in scans])
  idx = np.flatnonzero(has)
  newest_first = np.where(np.isnan(stamp[idx]), np.inf, -stamp[idx])  # no timestamp: oldest
  order = idx[np.lexsort((idx, newest_first, url[idx]))]               # by url, newest, first
  u = url[order]
  later = np.zeros(len(u), bool)
  later[1:] = u[1:] == u[:-1]
  remove = np.zeros(len(alive), bool)
  remove[order[later]] = True
  return remove


def _near_duplicates(scans, alive_per_file, cfg) -> np.ndarray:
  """All but the first document of each near-duplicate cluster among the alive ones."""
  has = [s.has_shingles & a for s, a in zip(scans, alive_per_file)]
  sigs = np.concatenate([s.signatures[h] for s, h in zip(scans, has)])   # (N, num_perms)
  for s in scans:
    s.signatures = None                        # the matrix above is the only copy from here
  idx = np.flatnonzero(np.concatenate(has))
  keep = minhash.cluster_keep(sigs, cfg.minhash.bands, cfg.minhash.threshold)
  remove = np.zeros(sum(map(len, has)), bool)
  remove[idx[~keep]] = True
  return remove


def _corpus_distribution(scans, cfg) -> np.ndarray:
  counts = np.zeros(cfg.filters.kl_buckets, np.float64)
  for s in scans:
    counts[s.kl_ids] += s.kl_counts          # ids are distinct within a file
  return log_corpus_distribution(counts)


def _frequent_lines(run, files, alive_per_file, cfg) -> list[np.ndarray]:
  """Pass 2: per bucket, the sorted hashes of lines in more than max_count documents."""
  counter = BucketCounter(cfg.line_dedup.bucket_docs, cfg.line_dedup.max_count)
  for hashes, sizes in run(passes.line_file, list(zip(map(str, files), alive_per_file))):
    for doc_lines in np.split(hashes, np.cumsum(sizes)[:-1]):   # in global document order
      counter.add(doc_lines)
  counter.close_bucket()
  return counter.frequent


def _frequent_for(bucket, frequent) -> dict:
  """The frequent-line sets of the buckets a file's documents fall in (non-empty ones only)."""
  return {int(b): frequent[b] for b in np.unique(bucket[bucket >= 0]) if len(frequent[b])}


def _filter(alive, results, removed, cfg) -> float | None:
  """Pass 3's decisions, in stage order; returns the KL threshold used (None if none)."""
  cat = lambda name: np.concatenate([getattr(r, name) for r in results])   # noqa: E731
  f = cfg.filters
  _drop(alive, cat("emptied"), removed, "line_dedup")
  _drop(alive, cat("dup_ngram"), removed, "dup_ngram")
  if f.dirty_words_path:
    _drop(alive, cat("dirty") > f.dirty_max_frac, removed, "dirty_words")
  threshold = None
  if f.kl_enabled:
    kl = cat("kl")
    scored = alive & ~np.isnan(kl)
    limits = [f.kl_max] if f.kl_max > 0 else []
    if 0 < f.kl_quantile < 1 and scored.any():
      limits.append(float(np.quantile(kl[scored], f.kl_quantile)))
    if limits:
      threshold = min(limits)
      _drop(alive, scored & (np.nan_to_num(kl) > threshold), removed, "kl_outlier")
  if cfg.langid.model_path:
    _drop(alive, ~cat("lang_ok"), removed, "langid")
  if cfg.quality.model_path:
    _drop(alive, cat("quality") < cfg.quality.min_score, removed, "quality")
  return threshold


@contextlib.contextmanager
def _pool(workers: int, cfg: CurationConfig, log_q=None):
  """A `run(fn, tasks)` that maps in order: in this process, or on `workers` processes.

  Spawned, not forked: forking a process that runs threads (JAX, a data loader) can deadlock.
  """
  if workers == 1:
    passes.init_worker(cfg, log_q)
    yield lambda fn, tasks: (fn(*t) for t in tasks)
    return
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(workers, initializer=passes.init_worker, initargs=(cfg, log_q)) as pool:
    yield lambda fn, tasks: pool.imap(_Call(fn), tasks)


@dataclasses.dataclass
class _Call:
  fn: object

  def __call__(self, args):
    return self.fn(*args)
