"""The near-duplicate stage's recall curve: recall vs the share of words edited (and Jaccard).

    python -m benchmarks.curation_recall            # ~1 min on 2 cores

Pairs of documents (~200 words) whose copy has a given share of its words replaced by random
ones are planted among unrelated documents; the staged pipeline runs with only MinHash on
(defaults: 5-word shingles, 128 permutations in 32 bands of 4 rows, threshold 0.7). For each
edit rate: the mean exact Jaccard of the pairs' shingle sets, the share of copies removed, and
what the settings predict: a pair at Jaccard J is a candidate with probability
1 - (1 - J**4)**32 and is verified when at least 90 of its 128 signature entries agree
(estimated Jaccard >= 0.7), which happens with probability P(Binomial(128, J) >= 90).
"""

import dataclasses
import json
import pathlib
import tempfile

import numpy as np
from scipy import stats as scipy_stats

from llama3_jax.data.curation import CurationConfig, curate, minhash
from llama3_jax.data.curation.hashing import hash_words, words

RATES = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10)


def planted_pairs(root: pathlib.Path, per_rate: int, seed: int = 0) -> list:
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(20_000)]
  docs, pairs = [], []
  for rate in RATES:
    for _ in range(per_rate):
      src = list(rng.choice(vocab, int(rng.integers(150, 250))))
      copy = list(src)
      for pos in rng.choice(len(copy), int(round(rate * len(copy))), replace=False):
        copy[pos] = str(rng.choice(vocab))
      a, b = f"s{len(docs)}", f"c{len(docs)}"
      docs += [{"id": a, "text": " ".join(src)}, {"id": b, "text": " ".join(copy)}]
      pairs.append((rate, " ".join(src), " ".join(copy), (a, b)))
  order = rng.permutation(len(docs))
  root.mkdir(parents=True)
  for k in range(4):
    (root / f"part-{k}.jsonl").write_text("".join(json.dumps(docs[i]) + "\n"
                                                  for i in order[k::4]))
  return pairs


def jaccard(a: str, b: str, n: int) -> float:
  x = minhash.shingles(hash_words(words(a)), n)
  y = minhash.shingles(hash_words(words(b)), n)
  return len(np.intersect1d(x, y)) / len(np.union1d(x, y))


def predicted(j: float, cfg: CurationConfig) -> float:
  m = cfg.minhash
  rows = m.num_perms // m.bands
  candidate = 1 - (1 - j ** rows) ** m.bands
  need = int(np.ceil(m.threshold * m.num_perms))
  return candidate * float(scipy_stats.binom.sf(need - 1, m.num_perms, j))


def main(per_rate: int = 150):
  base = CurationConfig()
  cfg = dataclasses.replace(
      base, url_dedup=dataclasses.replace(base.url_dedup, enabled=False),
      line_dedup=dataclasses.replace(base.line_dedup, enabled=False),
      filters=dataclasses.replace(base.filters, dup_ngrams=(), kl_enabled=False))
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    pairs = planted_pairs(tmp / "in", per_rate)
    curate(str(tmp / "in"), str(tmp / "out"), cfg, tasks=2)
    kept = {json.loads(line)["id"] for p in (tmp / "out").glob("*.jsonl")
            for line in p.read_text().splitlines()}
  print(f"near-duplicate recall, {per_rate} planted pairs per edit rate, defaults (5-word "
        f"shingles, {cfg.minhash.num_perms} permutations, {cfg.minhash.bands} bands, threshold "
        f"{cfg.minhash.threshold}):")
  print("| words edited | mean Jaccard | recall measured | recall predicted |")
  print("|---|---|---|---|")
  for rate in RATES:
    group = [p for p in pairs if p[0] == rate]
    js = [jaccard(a, b, cfg.minhash.shingle_size) for _, a, b, _ in group]
    recall = np.mean([not set(ids) <= kept for *_, ids in group])   # one of the two went
    expect = np.mean([predicted(j, cfg) for j in js])
    print(f"| {rate:.0%} | {np.mean(js):.2f} | {recall:.2f} | {expect:.2f} |")


if __name__ == "__main__":
  main()
