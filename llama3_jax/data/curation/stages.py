"""The curation pipeline as stages of tasks joined by files (report §3.1.1).

  scan        per input file: URL hashes sorted, MinHash signatures, band keys sorted per band,
              corpus word counts, empty documents, read report
  index       1 unit: documents per file; the corpus word distribution (KL filter)
  url         per URL-hash range: all but the newest (then first) document of each URL
  buckets     per (band, band-key range): candidate pairs with equal band keys, verified
              against the threshold with their signatures
  clusters    1 unit: union-find over the verified pairs -> removal ids; survivors per file
  lines       per input file: distinct line hashes of the survivors, by line-dedup bucket
  line_counts per (bucket, line-hash range): lines in more than max_count documents
  score       per input file: line removal, duplicated n-grams, dirty words, KL, langid, quality
  kl          1 unit: the KL threshold (an exact quantile, selected across files' sorted scores)
  write       per input file: the kept documents
  stats       1 unit: stats.json, and a stats JSON per stage

Documents are named by a global id, (file index << 32) | position in the file, so sorting ids
is input order and the decisions are those of the single-process reference (reference.py).
Per-task memory is bounded by the task's share, never by the corpus: a per-file unit holds one
file's arrays (signatures: num_perms * 4 B a document), a range unit about
`partitions.docs_per_unit` documents' keys (16-24 B each, plus the signatures of the
candidates it verifies), and the merges hold only what is global by nature: the verified pairs
(16 B each) and the union-find over duplicated documents, the word distribution
(filters.kl_buckets * 8 B), a few numbers per input file.
"""

import dataclasses
import json
import math
import pathlib

import numpy as np

from llama3_jax.data.curation import minhash, passes
from llama3_jax.data.curation.config import CurationConfig
from llama3_jax.data.curation.filters import log_corpus_distribution
from llama3_jax.data.curation.quantile import sorted_quantile
from llama3_jax.data.curation.tasks import Stage, fingerprint, load_npy, save_json, save_npy
from llama3_jax.errors import UserError

REMOVAL_STAGES = ("empty", "url_dedup", "minhash", "line_dedup", "dup_ngram", "dirty_words",
                  "kl_outlier", "langid", "quality")
_KEY_SPACE = 1 << 64


def gid(file_index: int, position) -> np.ndarray:
  """Global document ids: input order is id order."""
  return (np.int64(file_index) << np.int64(32)) + np.asarray(position, np.int64)


@dataclasses.dataclass
class Run:
  """What every unit of a curation run knows: its files, config and work directory."""
  work: pathlib.Path
  inputs: list            # [input path, output path, size, mtime_ns] per file
  cfg: CurationConfig

  def path(self, *parts) -> pathlib.Path:
    return self.work.joinpath(*map(str, parts))

  def file_dir(self, i: int) -> pathlib.Path:
    return self.path("scan", f"{i:05d}")

  def check_input(self, i: int) -> str:
    """The input's path, or a UserError if it changed since the run began (not mixed in)."""
    path, _, size, mtime = self.inputs[i]
    if fingerprint(path) != [size, mtime]:
      raise UserError(f"{path} changed since this curation run began",
                      "relaunch: the launcher sees the change and redoes its work")
    return path

  def meta(self, i: int) -> dict:
    return json.loads((self.file_dir(i) / "meta.json").read_text(encoding="utf-8"))

  def index(self) -> dict:
    return json.loads(self.path("index.json").read_text(encoding="utf-8"))

  def survivors(self) -> dict:
    return json.loads(self.path("survivors.json").read_text(encoding="utf-8"))

  def ranges(self, docs: int) -> int:
    return max(1, math.ceil(docs / self.cfg.partitions.docs_per_unit))


def build_stages(work, inputs, config, relaunch="") -> list[Stage]:
  """The stages of a curation run (those its config switches on), from its spec.json.
  `relaunch` (the command a failed unit names) is read from the spec by tasks.py."""
  run = Run(pathlib.Path(work), inputs, CurationConfig.from_dict(config))
  cfg, files = run.cfg, len(inputs)
  per_file = lambda i: run.inputs[i][0]   # noqa: E731
  one = dict(units=lambda: 1, max_tasks=1)
  stages = [Stage("scan", lambda: files, lambda i: _scan(run, i), per_file, files),
            Stage("index", run=lambda _: _index(run), **one)]
  if cfg.url_dedup.enabled:
    stages.append(Stage("url", lambda: run.ranges(run.index()["with_url"]),
                        lambda k: _url(run, k), lambda k: f"URL-hash range {k}"))
  if cfg.minhash.enabled:
    band_units = lambda: cfg.minhash.bands * run.ranges(run.index()["with_shingles"])  # noqa
    stages.append(Stage("buckets", band_units, lambda u: _buckets(run, u),
                        lambda u: f"band-key unit {u}"))
  stages.append(Stage("clusters", run=lambda _: _clusters(run), **one))
  if cfg.line_dedup.enabled:
    stages += [Stage("lines", lambda: files, lambda i: _lines(run, i), per_file, files),
               Stage("line_counts", lambda: _line_units(run)[0],
                     lambda u: _line_counts(run, u), lambda u: f"line bucket unit {u}")]
  if cfg.line_dedup.enabled or passes.any_filter(cfg):
    stages.append(Stage("score", lambda: files, lambda i: _score(run, i), per_file, files))
  if cfg.filters.kl_enabled:
    stages.append(Stage("kl", run=lambda _: _kl_threshold(run), **one))
  stages += [Stage("write", lambda: files, lambda i: _write(run, i), per_file, files),
             Stage("stats", run=lambda _: _stats(run, stages), **one)]
  return stages


# --- scan and index ------------------------------------------------------------------------

def _scan(run: Run, i: int) -> dict:
  path = run.check_input(i)
  passes.ensure_worker(run.cfg)
  s = passes.scan_file(path)
  out = run.file_dir(i)
  ids = gid(i, np.arange(s.report.docs))
  save_npy(out / "empty.npy", s.empty)
  has_url = s.has_url & ~s.empty
  if run.cfg.url_dedup.enabled:
    order = np.argsort(s.url_hash[has_url], kind="stable")        # by hash, then input order
    save_npy(out / "url_hash.npy", s.url_hash[has_url][order])
    save_npy(out / "url_stamp.npy", s.timestamp[has_url][order])
    save_npy(out / "url_gid.npy", ids[has_url][order])
  with_shingles = 0
  if run.cfg.minhash.enabled:
    save_npy(out / "signatures.npy", s.signatures)                # (n, num_perms) uint32
    rows = np.flatnonzero(s.has_shingles & ~s.empty)
    keys = minhash.band_keys(s.signatures[rows], run.cfg.minhash.bands)   # (bands, m)
    order = np.argsort(keys, axis=1, kind="stable")               # by key, then input order
    save_npy(out / "band_key.npy", np.take_along_axis(keys, order, axis=1))
    save_npy(out / "band_gid.npy", ids[rows][order])
    with_shingles = len(rows)
  if run.cfg.filters.kl_enabled:
    save_npy(out / "kl_ids.npy", s.kl_ids)
    save_npy(out / "kl_counts.npy", s.kl_counts)
  r = s.report
  save_json(out / "meta.json", {
      "docs": r.docs, "blank_lines": r.blank_lines, "skipped": r.skipped,
      "examples": r.examples, "file_problems": r.file_problems,
      "bad_timestamps": s.bad_timestamps, "empty": int(s.empty.sum()),
      "with_url": int(has_url.sum()), "with_shingles": with_shingles})
  return {"docs": r.docs}


def _index(run: Run) -> dict:
  metas = [run.meta(i) for i in range(len(run.inputs))]
  docs = [m["docs"] for m in metas]
  if run.cfg.filters.kl_enabled:
    counts = np.zeros(run.cfg.filters.kl_buckets, np.float64)
    for i in range(len(run.inputs)):
      d = run.file_dir(i)
      counts[load_npy(d / "kl_ids.npy")] += load_npy(d / "kl_counts.npy")  # distinct per file
    save_npy(run.path("log_q.npy"), log_corpus_distribution(counts))
  save_json(run.path("index.json"), {
      "docs": docs, "total": sum(docs), "with_url": sum(m["with_url"] for m in metas),
      "with_shingles": sum(m["with_shingles"] for m in metas)})
  return {"docs": sum(docs)}


def _key_slice(sorted_keys: np.ndarray, unit: int, ranges: int) -> slice:
  """The rows of a sorted uint64 key array inside key range `unit` of `ranges` equal ones."""
  lo = np.searchsorted(sorted_keys, np.uint64(unit * _KEY_SPACE // ranges))
  hi = (len(sorted_keys) if unit == ranges - 1 else
        np.searchsorted(sorted_keys, np.uint64((unit + 1) * _KEY_SPACE // ranges)))
  return slice(int(lo), int(hi))


# --- URL dedup -------------------------------------------------------------------------------

def _url(run: Run, k: int) -> dict:
  ranges = run.ranges(run.index()["with_url"])
  url, stamp, ids = [], [], []
  for i in range(len(run.inputs)):
    d = run.file_dir(i)
    hashes = load_npy(d / "url_hash.npy", mmap=True)
    rows = _key_slice(hashes, k, ranges)
    url.append(np.array(hashes[rows]))
    stamp.append(np.array(load_npy(d / "url_stamp.npy", mmap=True)[rows]))
    ids.append(np.array(load_npy(d / "url_gid.npy", mmap=True)[rows]))
  url, stamp, ids = map(np.concatenate, (url, stamp, ids))
  newest_first = np.where(np.isnan(stamp), np.inf, -stamp)       # no timestamp: oldest
  order = np.lexsort((ids, newest_first, url))                   # by url, newest, first
  later = np.zeros(len(order), bool)
  later[1:] = url[order][1:] == url[order][:-1]
  removed = np.sort(ids[order][later])
  save_npy(run.path("url", f"{k:05d}.npy"), removed)
  return {"docs": len(ids), "removed": len(removed)}


def _removal_arrays(run: Run) -> list[np.ndarray]:
  """The sorted removal ids of URL dedup and MinHash written so far (memory-mapped)."""
  paths = sorted(run.path("url").glob("*.npy")) if run.path("url").is_dir() else []
  if run.path("minhash_removed.npy").exists():
    paths.append(run.path("minhash_removed.npy"))
  return [load_npy(p, mmap=True) for p in paths]


def _is_removed(ids: np.ndarray, arrays) -> np.ndarray:
  """Whether each id is in one of the sorted removal arrays. (N,) bool."""
  hit = np.zeros(len(ids), bool)
  for a in arrays:
    if len(a):
      pos = np.minimum(np.searchsorted(a, ids), len(a) - 1)
      hit |= np.asarray(a[pos]) == ids
  return hit


def _removed_in_file(arrays, i: int) -> np.ndarray:
  """Positions within file i of the ids in the sorted removal arrays."""
  lo, hi = gid(i, 0), gid(i + 1, 0)
  parts = [np.asarray(a[np.searchsorted(a, lo):np.searchsorted(a, hi)]) - lo for a in arrays]
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


# --- MinHash: buckets -> pairs -> clusters ----------------------------------------------------

def _buckets(run: Run, unit: int) -> dict:
  ranges = run.ranges(run.index()["with_shingles"])
  band, k = divmod(unit, ranges)
  keys, ids = [], []
  for i in range(len(run.inputs)):
    d = run.file_dir(i)
    band_keys = load_npy(d / "band_key.npy", mmap=True)
    if band_keys.shape[1] == 0:
      continue
    rows = _key_slice(band_keys[band], k, ranges)
    keys.append(np.array(band_keys[band, rows]))
    ids.append(np.array(load_npy(d / "band_gid.npy", mmap=True)[band, rows]))
  keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
  ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
  docs = len(ids)
  shared = _in_shared_key(keys)                  # only these can pair: read their signatures
  keys, ids = keys[shared], ids[shared]
  alive = ~_is_removed(ids, _removal_arrays(run))   # URL dedup ran before
  keys, ids = keys[alive], ids[alive]
  order = np.argsort(ids)                        # each document once per band: input order
  keys, ids = keys[order], ids[order]
  src, dst = minhash.verified_pairs(_signatures(run, ids), keys, run.cfg.minhash.threshold)
  save_npy(run.path("pairs", f"{unit:06d}.npy"), np.stack([ids[src], ids[dst]]))
  # Documents counted in band 0 only: the stage's docs/s is per document, not per band.
  return {"docs": docs if band == 0 else 0, "band_entries": docs, "candidates": len(ids),
          "pairs": len(src)}


def _in_shared_key(keys: np.ndarray) -> np.ndarray:
  u, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
  return counts[inverse] > 1


def _signatures(run: Run, ids: np.ndarray) -> np.ndarray:
  """The signatures of documents `ids` (sorted), read from their files' memory maps."""
  out = np.zeros((len(ids), run.cfg.minhash.num_perms), np.uint32)
  files = ids >> 32
  for i in np.unique(files):
    rows = np.flatnonzero(files == i)
    sig = load_npy(run.file_dir(int(i)) / "signatures.npy", mmap=True)
    out[rows] = sig[ids[rows] - gid(int(i), 0)]
  return out


def _clusters(run: Run) -> dict:
  """Removal ids (all but the first of each cluster), then each file's surviving count."""
  pairs = [load_npy(p) for p in sorted(run.path("pairs").glob("*.npy"))] if \
      run.path("pairs").is_dir() else []
  edges = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), np.int64)
  nodes = np.unique(edges)                       # sorted: the first document is the smallest
  label = minhash.components(len(nodes), np.searchsorted(nodes, edges[0]),
                             np.searchsorted(nodes, edges[1]))
  removed = nodes[label != np.arange(len(nodes))]
  save_npy(run.path("minhash_removed.npy"), removed)
  arrays = _removal_arrays(run)
  index = run.index()
  alive = [index["docs"][i] - run.meta(i)["empty"] - len(_removed_in_file(arrays, i))
           for i in range(len(run.inputs))]
  save_json(run.path("survivors.json"), {"alive": alive,
                                         "offsets": np.cumsum([0] + alive).tolist()})
  return {"docs": len(nodes), "pairs": edges.shape[1], "removed": len(removed)}


def _alive(run: Run, i: int) -> np.ndarray:
  """File i's documents that survived empty, URL and MinHash removal. (n,) bool."""
  alive = ~load_npy(run.file_dir(i) / "empty.npy")
  alive[_removed_in_file(_removal_arrays(run), i)] = False
  return alive


# --- line dedup -----------------------------------------------------------------------------

def _buckets_of(run: Run, i: int, alive: np.ndarray) -> np.ndarray:
  """Line-dedup bucket of each alive document (global survivor position // bucket_docs)."""
  bucket = np.full(len(alive), -1, np.int64)
  if run.cfg.line_dedup.enabled:
    start = run.survivors()["offsets"][i]
    bucket[alive] = (start + np.arange(alive.sum())) // run.cfg.line_dedup.bucket_docs
  return bucket


def _lines(run: Run, i: int) -> dict:
  path = run.check_input(i)
  passes.ensure_worker(run.cfg)
  alive = _alive(run, i)
  bucket = _buckets_of(run, i, alive)
  hashes, sizes = passes.line_file(path, alive)
  doc_bucket = np.repeat(bucket[alive], sizes)
  for b in np.unique(bucket[alive]):     # every bucket it has survivors in (line_counts reads)
    save_npy(run.path("lines", f"{i:05d}-{b:06d}.npy"), np.sort(hashes[doc_bucket == b]))
  return {"docs": int(alive.sum()), "lines": len(hashes)}


def _line_units(run: Run) -> tuple[int, int, int]:
  """(units, buckets, ranges per bucket) of the line-count stage."""
  total = run.survivors()["offsets"][-1]
  bucket_docs = run.cfg.line_dedup.bucket_docs
  buckets = math.ceil(total / bucket_docs)
  ranges = run.ranges(min(bucket_docs, total))
  return buckets * ranges, buckets, ranges


def _line_counts(run: Run, unit: int) -> dict:
  _, _, ranges = _line_units(run)
  b, k = divmod(unit, ranges)
  offsets, bucket_docs = run.survivors()["offsets"], run.cfg.line_dedup.bucket_docs
  parts = []
  for i in range(len(run.inputs)):       # the files with survivors in bucket b
    if offsets[i] < (b + 1) * bucket_docs and offsets[i + 1] > b * bucket_docs:
      hashes = load_npy(run.path("lines", f"{i:05d}-{b:06d}.npy"), mmap=True)
      parts.append(np.array(hashes[_key_slice(hashes, k, ranges)]))
  h = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
  values, counts = np.unique(h, return_counts=True)
  frequent = values[counts > run.cfg.line_dedup.max_count]
  save_npy(run.path("frequent", f"{b:06d}-{k:04d}.npy"), frequent)
  return {"lines": len(h), "frequent": len(frequent)}


def _frequent_for(run: Run, bucket: np.ndarray) -> dict:
  """The frequent-line sets of the buckets a file's documents fall in (non-empty ones only)."""
  out = {}
  ranges = _line_units(run)[2] if run.cfg.line_dedup.enabled else 0
  for b in np.unique(bucket[bucket >= 0]):
    parts = [load_npy(run.path("frequent", f"{b:06d}-{k:04d}.npy")) for k in range(ranges)]
    frequent = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if len(frequent):
      out[int(b)] = frequent
  return out


# --- filters, KL threshold, output ----------------------------------------------------------

def _score(run: Run, i: int) -> dict:
  path = run.check_input(i)
  log_q = run.path("log_q.npy")
  passes.ensure_worker(run.cfg, str(log_q) if run.cfg.filters.kl_enabled else None)
  alive = _alive(run, i)
  bucket = _buckets_of(run, i, alive)
  r = passes.score_file(path, alive, bucket, _frequent_for(run, bucket))
  out = run.file_dir(i)
  for name in ("emptied", "dup_ngram", "dirty", "kl", "lang_ok", "quality"):
    save_npy(out / f"score_{name}.npy", getattr(r, name))
  f = run.cfg.filters
  candidates = alive & ~r.emptied & ~r.dup_ngram
  if f.dirty_words_path:
    candidates &= ~(r.dirty > f.dirty_max_frac)
  candidates &= ~np.isnan(r.kl)
  save_npy(out / "kl_sorted.npy", np.sort(r.kl[candidates]))    # what the quantile ranks
  return {"docs": int(alive.sum()), "lines_removed": r.lines_removed}


def _kl_threshold(run: Run) -> dict:
  f = run.cfg.filters
  limits = [f.kl_max] if f.kl_max > 0 else []
  scores = [load_npy(run.file_dir(i) / "kl_sorted.npy", mmap=True)
            for i in range(len(run.inputs))]
  n = sum(len(s) for s in scores)
  if 0 < f.kl_quantile < 1 and n:
    limits.append(sorted_quantile(scores, f.kl_quantile))
  threshold = min(limits) if limits else None
  save_json(run.path("kl_threshold.json"), {"threshold": threshold})
  return {"docs": n}


def _write(run: Run, i: int) -> dict:
  path = run.check_input(i)
  passes.ensure_worker(run.cfg)
  cfg, f = run.cfg, run.cfg.filters
  alive = _alive(run, i)
  bucket = _buckets_of(run, i, alive)
  removed = dict.fromkeys(REMOVAL_STAGES[3:], 0)

  def drop(remove, stage):
    remove = remove & alive
    alive[remove] = False
    removed[stage] += int(remove.sum())

  d = run.file_dir(i)
  if (d / "score_kl.npy").exists():
    s = {name: load_npy(d / f"score_{name}.npy")
         for name in ("emptied", "dup_ngram", "dirty", "kl", "lang_ok", "quality")}
    drop(s["emptied"], "line_dedup")
    drop(s["dup_ngram"], "dup_ngram")
    if f.dirty_words_path:
      drop(s["dirty"] > f.dirty_max_frac, "dirty_words")
    if f.kl_enabled:
      threshold = json.loads(run.path("kl_threshold.json").read_text())["threshold"]
      if threshold is not None:
        drop(~np.isnan(s["kl"]) & (np.nan_to_num(s["kl"]) > threshold), "kl_outlier")
    if cfg.langid.model_path:
      drop(~s["lang_ok"], "langid")
    if cfg.quality.model_path:
      drop(s["quality"] < cfg.quality.min_score, "quality")
  written = passes.write_file(path, run.inputs[i][1], alive, bucket, _frequent_for(run, bucket))
  if written != int(alive.sum()):
    raise RuntimeError(f"wrote {written} documents, expected {int(alive.sum())}: {path} "
                       "changed during curation")
  return {"docs": len(alive), "kept": written, **{f"removed_{k}": v for k, v in removed.items()}}


# --- stats ----------------------------------------------------------------------------------

def _stats(run: Run, stages: list[Stage]) -> dict:
  """stats.json (deterministic: the same for any executor and task count) and, beside the
  stage outputs, a stats JSON per stage (its units' sums, with seconds and peak memory)."""
  from llama3_jax.data.curation.tasks import stage_stats
  per_stage = {s.name: stage_stats(run.work, s) for s in stages if s.name != "stats"}
  for name, stats in per_stage.items():
    save_json(run.path("stats", f"{name}.json"), stats)
  files = range(len(run.inputs))
  metas = [run.meta(i) for i in files]
  removed = dict.fromkeys(REMOVAL_STAGES, 0)
  removed["empty"] = sum(m["empty"] for m in metas)
  removed["url_dedup"] = per_stage.get("url", {}).get("removed", 0)
  removed["minhash"] = per_stage["clusters"]["removed"]
  for stage in REMOVAL_STAGES[3:]:
    removed[stage] = per_stage["write"].get(f"removed_{stage}", 0)
  skipped: dict[str, int] = {}
  for m in metas:
    for reason, count in m["skipped"].items():
      skipped[reason] = skipped.get(reason, 0) + count
  line_units = _line_units(run) if "line_counts" in per_stage else (0, 0, 0)
  kept = per_stage["write"].get("kept", 0)
  threshold = (json.loads(run.path("kl_threshold.json").read_text())["threshold"]
               if "kl" in per_stage else None)
  stats = {
      "input_lines": run.index()["total"] + sum(skipped.values()),
      "kept": kept,
      "removed": removed,
      "skipped_lines": skipped,
      "skipped_examples": [e for m in metas for e in m["examples"]][:100],
      "file_problems": [p for m in metas for p in m["file_problems"]],
      "blank_lines": sum(m["blank_lines"] for m in metas),
      "lines_removed": per_stage.get("score", {}).get("lines_removed", 0),
      "bad_timestamps": sum(m["bad_timestamps"] for m in metas),
      "kl_threshold": threshold,
      "line_dedup_buckets": line_units[1],
      "frequent_lines": per_stage.get("line_counts", {}).get("frequent", 0),
      "files": len(run.inputs),
      "config": layout_free_config(run.cfg),
  }
  write_stats(run.work.parent / "stats.json", stats)
  return {"docs": kept}


def layout_free_config(cfg: CurationConfig) -> dict:
  """The config as stats.json records it: without `workers`, which never changes a result."""
  return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"}


def write_stats(path: pathlib.Path, stats: dict) -> None:
  """stats.json as the single-process reference writes it (indented, keys in stage order)."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  tmp.replace(path)
