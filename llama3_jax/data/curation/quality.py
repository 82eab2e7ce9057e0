"""A quality classifier hook: logistic regression on hashed word n-grams, numpy only (§3.1.1).

Llama 3 scores quality with fastText and RoBERTa classifiers trained on Llama 2 judgements;
this is the small linear version a user trains on their own labelled examples, a JSONL of
{"text": ..., "label": 1 | 0} (1 or true = keep-worthy):

  python -m experiments.curate --train-quality labelled.jsonl --quality-model quality.npz
  python -m experiments.curate --input raw/ --out clean/ --quality-model quality.npz \
      --config.quality.min_score=0.5

Features: log(1 + count) of word 1- and 2-grams hashed into `buckets`, L2-normalised per
document. Training: full-batch Adam on the mean logistic loss plus an L2 penalty, with the
examples held in memory as a sparse matrix (the labelled set is small, the corpus is not).
"""

import dataclasses

import numpy as np

from llama3_jax.data.curation.hashing import hash_words, ngram_hashes, words


def word_features(text: str, buckets: int, orders=(1, 2)) -> tuple[np.ndarray, np.ndarray]:
  """Sparse feature vector of a text: (ids, values), L2-normalised."""
  h = hash_words(words(text))
  grams = np.concatenate([ngram_hashes(h, n) for n in orders])
  ids, counts = np.unique((grams % np.uint64(buckets)).astype(np.int64), return_counts=True)
  values = np.log1p(counts)
  norm = np.sqrt((values ** 2).sum())
  return ids, (values / norm if norm > 0 else values)


@dataclasses.dataclass
class QualityModel:
  weights: np.ndarray      # (buckets,) float32
  bias: float

  @classmethod
  def train(cls, texts, labels, buckets: int = 1 << 18, steps: int = 300, lr: float = 0.05,
            l2: float = 1e-4) -> "QualityModel":
    y = np.asarray(labels, np.float64)                                  # (N,)
    if len(np.unique(y)) < 2:
      raise ValueError("the quality classifier needs examples labelled both 1 and 0")
    feats = [word_features(t, buckets) for t in texts]
    rows = np.repeat(np.arange(len(feats)), [len(i) for i, _ in feats])   # (nnz,)
    cols = np.concatenate([i for i, _ in feats])
    vals = np.concatenate([v for _, v in feats])
    w, b = np.zeros(buckets), 0.0
    m, v = np.zeros(buckets + 1), np.zeros(buckets + 1)
    for step in range(1, steps + 1):      # Adam (b1 0.9, b2 0.999) on [w, b]
      logits = np.bincount(rows, vals * w[cols], minlength=len(y)) + b   # X @ w + b: (N,)
      logits = np.clip(logits, -30.0, 30.0)
      residual = (1.0 / (1.0 + np.exp(-logits)) - y) / len(y)             # dLoss/dlogit
      grad = np.append(np.bincount(cols, vals * residual[rows], minlength=buckets) + l2 * w,
                       residual.sum())
      m = 0.9 * m + 0.1 * grad
      v = 0.999 * v + 0.001 * grad ** 2
      update = lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
      w -= update[:-1]
      b -= update[-1]
    return cls(w.astype(np.float32), float(b))

  def score(self, text: str) -> float:
    """P(high quality) in [0, 1]."""
    ids, values = word_features(text, len(self.weights))
    logit = min(max(float(values @ self.weights[ids]) + self.bias, -30.0), 30.0)
    return float(1.0 / (1.0 + np.exp(-logit)))

  def save(self, path: str):
    with open(path, "wb") as f:   # a file object: np.savez would append ".npz" to a bare name
      np.savez(f, kind="quality", weights=self.weights, bias=self.bias)

  @classmethod
  def load(cls, path: str) -> "QualityModel":
    with np.load(path) as z:
      if str(z.get("kind", "")) != "quality":
        raise ValueError(f"{path} is not a quality model (train one with --train-quality)")
      return cls(z["weights"], float(z["bias"]))


def parse_label(value, where: str) -> int:
  """1/0, true/false (or "1"/"0") -> int; anything else is a clear error."""
  if isinstance(value, bool) or value in (0, 1):
    return int(value)
  if isinstance(value, str) and value.strip().lower() in ("1", "0", "true", "false"):
    return int(value.strip().lower() in ("1", "true"))
  raise ValueError(f"{where}: label {value!r} must be 1/0 or true/false")
