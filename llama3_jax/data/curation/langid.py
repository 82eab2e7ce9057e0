"""Language identification: multinomial naive Bayes on hashed character 1-3-grams (§3.1.1).

Llama 3 uses fastText's classifier; this is a dependency-free stand-in trained on labelled
examples the user provides, a JSONL of {"text": ..., "lang": ...}:

  python -m experiments.curate --train-langid labelled.jsonl --langid-model langid.npz
  python -m experiments.curate --input raw/ --out clean/ --langid-model langid.npz \
      --config.langid.allowed=en,fr --config.langid.min_prob=0.5

Features: counts of character n-grams (n = 1..3) of the lower-cased text padded with spaces,
hashed into `buckets`; only the first `max_chars` characters are read (plenty for a language
and bounded cost). Class model: log P(bucket | lang) with add-alpha smoothing, and the prior.
"""

import dataclasses

import numpy as np

from llama3_jax.data.curation.hashing import char_codes, ngram_hashes


def char_features(text: str, buckets: int, orders=(1, 2, 3), max_chars=10_000):
  """Hashed character n-gram counts: (ids, counts), each (distinct,) int64."""
  codes = char_codes(" " + " ".join(text[:max_chars].lower().split()) + " ")
  ids = np.concatenate([ngram_hashes(codes, n) for n in orders])
  return np.unique((ids % np.uint64(buckets)).astype(np.int64), return_counts=True)


@dataclasses.dataclass
class LangId:
  langs: np.ndarray           # (C,) str
  log_prior: np.ndarray       # (C,) float32
  log_prob: np.ndarray        # (C, buckets) float32: log P(n-gram bucket | lang)

  @classmethod
  def train(cls, texts, labels, buckets: int = 1 << 18, alpha: float = 0.1) -> "LangId":
    langs = np.array(sorted(set(labels)))
    if len(langs) < 2:
      raise ValueError(f"language ID needs examples of at least two languages, got {list(langs)}")
    index = {lang: i for i, lang in enumerate(langs)}
    counts = np.zeros((len(langs), buckets))
    docs = np.zeros(len(langs))
    for text, label in zip(texts, labels):
      ids, c = char_features(text, buckets)
      counts[index[label], ids] += c
      docs[index[label]] += 1
    smoothed = counts + alpha
    log_prob = np.log(smoothed / smoothed.sum(axis=1, keepdims=True))
    return cls(langs, np.log(docs / docs.sum()).astype(np.float32), log_prob.astype(np.float32))

  def predict(self, text: str) -> tuple[str, float]:
    """The most probable language and its posterior probability."""
    ids, c = char_features(text, self.log_prob.shape[1])
    scores = self.log_prior + self.log_prob[:, ids] @ c.astype(np.float32)   # (C,)
    post = np.exp(scores - scores.max())
    post /= post.sum()
    best = int(np.argmax(post))
    return str(self.langs[best]), float(post[best])

  def save(self, path: str):
    with open(path, "wb") as f:   # a file object: np.savez would append ".npz" to a bare name
      np.savez(f, kind="langid", langs=self.langs, log_prior=self.log_prior,
               log_prob=self.log_prob)

  @classmethod
  def load(cls, path: str) -> "LangId":
    with np.load(path) as z:
      if str(z.get("kind", "")) != "langid":
        raise ValueError(f"{path} is not a language-ID model (train one with --train-langid)")
      return cls(z["langs"], z["log_prior"], z["log_prob"])
