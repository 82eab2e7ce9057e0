"""Curation and tokenization as staged tasks: throughput per core, Ray's overhead, datatrove's
MinHash pipeline side by side, and peak memory per task as the corpus grows.

    python -m benchmarks.curation_scale                      # all tables
    python -m benchmarks.curation_scale --sizes 10000,100000 --skip-throughput

(a) One generated corpus (--docs documents of 60-120 random words in 8 files; 10% exact and
    10% near copies, 2% of words edited; a boilerplate line on one document in four), in one
    run: our full curation and our MinHash-only pipeline with the local executor at 1 and 2
    tasks and with Ray on this machine (a local 2-CPU cluster, its start-up excluded and
    reported); datatrove's own four MinHash stages (signatures, buckets, cluster, filter) with
    its LocalPipelineExecutor at 1 and 2 tasks with the same settings (5-word shingles, 32
    bands of 4 rows, 32-bit hashes, the same lower-cased \\w+ words); tokenization of the
    curated text (experiments.prepare_data's stages). Rates are per core: documents (or
    tokens) / wall seconds / cores busy.
(b) Peak resident memory per task (each unit's own peak: the kernel's VmHWM, reset before the
    unit) per stage for generated corpora of --sizes documents in files of 10K documents, with
    `partitions.docs_per_unit` = 10K, so that the range stages get more units as the corpus
    grows: the per-task peak stays flat except in the one-unit merges, whose state is global
    by nature (the verified pairs and the union-find over duplicated documents).
"""

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from llama3_jax.data.curation import CurationConfig, curate
from llama3_jax.data.curation.hashing import words

STAGES = ("scan", "index", "url", "buckets", "clusters", "lines", "line_counts", "score",
          "kl", "write")


def generate(root: pathlib.Path, docs: int, files: int, seed: int = 0) -> None:
  """`docs` documents in `files` JSONL files: 80% distinct, 10% exact, 10% near copies."""
  rng = np.random.default_rng(seed)
  # Letters only: datatrove's text normalisation folds digits, so "w1" and "w2" would be one.
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  vocab = np.unique(["".join(w) for w in letters[rng.integers(0, 26, (40_000, 6))]])
  boiler = "subscribe to our newsletter for more"
  root.mkdir(parents=True, exist_ok=True)
  per_file = -(-docs // files)
  made = 0
  for k in range(files):
    n = min(per_file, docs - made)
    lengths = rng.integers(60, 120, n)
    ids = rng.integers(0, len(vocab), lengths.sum())
    texts = np.split(vocab[ids], np.cumsum(lengths)[:-1])
    out = []
    for i, ws in enumerate(texts):
      kind = rng.random()
      if kind < 0.1 and i > 0:                         # exact copy of an earlier document
        ws = texts[int(rng.integers(0, i))]
      elif kind < 0.2 and i > 0:                       # near copy: 2% of words replaced
        ws = texts[int(rng.integers(0, i))].copy()
        ws[rng.integers(0, len(ws), max(1, len(ws) // 50))] = vocab[rng.integers(0, len(vocab))]
      text = " ".join(ws[:30]) + "\n" + " ".join(ws[30:])
      if kind > 0.75:
        text = boiler + "\n" + text
      out.append(json.dumps({"text": text, "url": f"https://e.org/{k}/{i}"}) + "\n")
    (root / f"part-{k:05d}.jsonl").write_text("".join(out))
    made += n


def config(minhash_only: bool = False, docs_per_unit: int = 1_000_000, filters=True):
  c = CurationConfig(workers=2)
  c = dataclasses.replace(c, partitions=dataclasses.replace(c.partitions,
                                                            docs_per_unit=docs_per_unit))
  if minhash_only or not filters:
    c = dataclasses.replace(c, filters=dataclasses.replace(c.filters, dup_ngrams=(),
                                                           kl_enabled=False))
  if minhash_only:
    c = dataclasses.replace(c, url_dedup=dataclasses.replace(c.url_dedup, enabled=False),
                            line_dedup=dataclasses.replace(c.line_dedup, enabled=False))
  return c


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def datatrove_minhash(corpus: pathlib.Path, work: pathlib.Path, tasks: int) -> float:
  """datatrove's four MinHash stages on `corpus`, our settings; returns wall seconds."""
  from datatrove.executor import LocalPipelineExecutor
  from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets,
                                                MinhashDedupCluster, MinhashDedupFilter,
                                                MinhashDedupSignature)
  from datatrove.pipeline.readers import JsonlReader
  from datatrove.pipeline.writers.jsonl import JsonlWriter
  from datatrove.utils.hashing import HashConfig
  from datatrove.utils.word_tokenizers import WordTokenizer
  from loguru import logger
  logger.remove()                    # its per-task statistics would bury the tables
  logger.add(sys.stderr, level="WARNING")

  class Words(WordTokenizer):        # our tokenisation: lower-cased \w+ runs
    def word_tokenize(self, text):
      return words(text)

    def sent_tokenize(self, text):
      return [text]

    def span_tokenize(self, text):
      return [(0, len(text))]

  cfg = MinhashConfig(n_grams=5, num_buckets=32, hashes_per_bucket=4,
                      hash_config=HashConfig(precision=32, hash_fc="sha1"))
  files = len(list(corpus.glob("*.jsonl")))
  common = dict(logging_dir=str(work / "logs"), skip_completed=False)
  sigs = LocalPipelineExecutor(pipeline=[
      JsonlReader(str(corpus)),
      MinhashDedupSignature(str(work / "sigs"), config=cfg, language=Words())],
      tasks=files, workers=tasks, **common)
  buckets = LocalPipelineExecutor(pipeline=[
      MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)],
      tasks=cfg.num_buckets, workers=tasks, depends=sigs, **common)
  cluster = LocalPipelineExecutor(pipeline=[
      MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg)],
      tasks=1, depends=buckets, **common)
  final = LocalPipelineExecutor(pipeline=[
      JsonlReader(str(corpus)), MinhashDedupFilter(str(work / "remove")),
      JsonlWriter(str(work / "out"))], tasks=files, workers=tasks, depends=cluster, **common)
  return timed(final.run)


def kept_docs(out: pathlib.Path) -> int:
  return json.loads((out / "stats.json").read_text())["kept"]


def throughput(docs: int, tmp: pathlib.Path):
  from llama3_jax.data.curation import executors
  from llama3_jax.data.prepare import prepare
  from llama3_jax.data.tokenizers import train_sentencepiece
  corpus = tmp / "corpus"
  generate(corpus, docs, 8)
  rows = []

  def ours(name, cfg, executor, tasks):
    out = tmp / f"out-{len(rows)}"
    seconds = timed(lambda: curate(str(corpus), str(out), cfg, executor=executor, tasks=tasks))
    rows.append((name, f"{executor}, {tasks} task{'s' * (tasks > 1)}", seconds, docs,
                 min(tasks, 2), "docs"))
    return out

  full = ours("ours: full curation", config(), "local", 1)
  ours("ours: full curation", config(), "local", 2)
  only = ours("ours: MinHash only", config(minhash_only=True), "local", 1)
  ours("ours: MinHash only", config(minhash_only=True), "local", 2)
  for tasks in (1, 2):
    seconds = datatrove_minhash(corpus, tmp / f"datatrove-{tasks}", tasks)
    rows.append(("datatrove: MinHash (4 stages)", f"LocalPipelineExecutor, {tasks} "
                 f"task{'s' * (tasks > 1)}", seconds, docs, tasks, "docs"))
  dt_kept = sum(1 for p in (tmp / "datatrove-1" / "out").glob("*") for _ in
                __import__("gzip").open(p, "rt"))
  ray_start = timed(lambda: executors.start_ray(num_cpus=2))
  ours("ours: full curation", config(), "ray", 2)
  ours("ours: MinHash only", config(minhash_only=True), "ray", 2)
  texts = [json.loads(line)["text"] for p in sorted(full.glob("*.jsonl"))
           for line in p.read_text().splitlines()]
  tok = train_sentencepiece(texts[:2000], 1000, tmp / "tok.model")
  for executor, tasks in (("local", 1), ("local", 2), ("ray", 2)):
    data = tmp / f"data-{executor}-{tasks}"
    seconds = timed(lambda: prepare(full, tok.path, data, executor=executor, workers=tasks,
                                    tasks=tasks))
    tokens = json.loads((data / "manifest.json").read_text())["sources"]["general"]["tokens"]
    rows.append(("tokenization (prepare_data)", f"{executor}, {tasks} task"
                 f"{'s' * (tasks > 1)}", seconds, tokens, tasks, "tokens"))
  import ray
  ray.shutdown()
  print(f"\n(a) {docs:,} generated documents in 8 files, one run on this machine (2 cores); "
        f"Ray's local cluster started in {ray_start:.1f} s (not counted):")
  print("| pipeline | executor | wall s | per core /s |")
  print("|---|---|---|---|")
  for name, how, seconds, count, cores, unit in rows:
    print(f"| {name} | {how} | {seconds:.1f} | {count / seconds / cores:,.0f} {unit} |")
  wall = {(n, h): s for n, h, s, *_ in rows}
  for tasks in (1, 2):
    t = f"{tasks} task{'s' * (tasks > 1)}"
    ratio = wall[("datatrove: MinHash (4 stages)", f"LocalPipelineExecutor, {t}")] / \
        wall[("ours: MinHash only", f"local, {t}")]
    print(f"MinHash only, {t}: ours {ratio:.2f}x datatrove's speed")
  for name in ("ours: full curation", "ours: MinHash only"):
    print(f"{name}: Ray / local at 2 tasks = {wall[(name, 'ray, 2 tasks')] / wall[(name, 'local, 2 tasks')]:.2f}x the wall time")
  print(f"kept: ours MinHash-only {kept_docs(only):,}, datatrove {dt_kept:,} "
        f"(of {docs:,}; ~{int(docs * 0.2):,} planted copies)")


def memory(sizes, tmp: pathlib.Path):
  results = {}
  for n in sizes:
    corpus = tmp / f"mem-{n}"
    generate(corpus, n, max(1, n // 10_000), seed=1)
    out = tmp / f"mem-out-{n}"
    seconds = timed(lambda: curate(str(corpus), str(out),
                                   config(docs_per_unit=10_000, filters=False), tasks=2))
    stats = {s: json.loads(p.read_text()) for s in STAGES
             if (p := out / "_work" / "stats" / f"{s}.json").exists()}
    results[n] = (seconds, stats)
    print(f"{n:,} documents: {seconds:.0f} s", flush=True)
    shutil.rmtree(corpus)
    shutil.rmtree(out)
  print("\n(b) peak resident MB per task (the largest unit of each stage; a bare task process "
        "is ~70 MB), files of 10K documents, partitions.docs_per_unit = 10K, dedup stages and "
        "line dedup on, heuristic filters off:")
  print("| stage | " + " | ".join(f"{n:,} docs" for n in sizes) + " |")
  print("|---|" + "---|" * len(sizes))
  for stage in STAGES:
    if any(stage in results[n][1] for n in sizes):
      cells = [f"{results[n][1][stage]['peak_rss_mb_per_task']:.0f} ({results[n][1][stage]['units']} units)"
               if stage in results[n][1] else "-" for n in sizes]
      print(f"| {stage} | " + " | ".join(cells) + " |")
  print("| wall s, 2 tasks | " + " | ".join(f"{results[n][0]:.0f}" for n in sizes) + " |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--docs", type=int, default=20_000)
  parser.add_argument("--sizes", default="10000,100000,1000000")
  parser.add_argument("--skip-throughput", action="store_true")
  parser.add_argument("--skip-memory", action="store_true")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    if not args.skip_throughput:
      throughput(args.docs, pathlib.Path(tmp))
    if not args.skip_memory:
      memory([int(s) for s in args.sizes.split(",")], pathlib.Path(tmp))


if __name__ == "__main__":
  main()
