"""Settings of the curation pipeline (report §3.1.1), one frozen dataclass per stage.

The launcher's ConfigDict (experiments/configs/curation.py) is built from these defaults and
turned back into them with `CurationConfig.from_dict`, so a misspelt key fails loudly here.
"""

import dataclasses

from llama3_jax.schema import from_dict


@dataclasses.dataclass(frozen=True)
class ReadConfig:
  """Where the fields of an input line live."""
  text_field: str = "text"
  url_field: str = "url"
  # Tried in order; ISO-8601 strings ("2024-05-01T12:00:00Z") or numbers (epoch seconds).
  timestamp_fields: tuple[str, ...] = ("timestamp", "date")
  strict: bool = False          # raise on the first malformed line instead of counting it


@dataclasses.dataclass(frozen=True)
class UrlDedupConfig:
  """Stage 1: one document per URL, the newest where timestamps exist (else the first)."""
  enabled: bool = True


@dataclasses.dataclass(frozen=True)
class MinHashConfig:
  """Stage 2: near-duplicate documents (MinHash + LSH banding, verified, union-find).

  With 128 permutations in 32 bands of 4 rows, a pair at Jaccard 0.7 becomes a candidate with
  probability 1 - (1 - 0.7**4)**32 > 0.9999 and one at 0.3 with 0.23; candidates are then
  verified against `threshold` with the signature's estimate, so banding only sets the cost.
  """
  enabled: bool = True
  shingle_size: int = 5         # word n-grams
  num_perms: int = 128
  bands: int = 32
  threshold: float = 0.7        # estimated Jaccard at or above which two documents are one
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class LineDedupConfig:
  """Stage 3: lines seen in more than `max_count` documents of a bucket are removed.

  Llama 3 removes lines seen more than 6 times per bucket of 30M documents; 6 per 100k keeps
  the same idea for corpora a thousand times smaller.
  """
  enabled: bool = True
  max_count: int = 6
  bucket_docs: int = 100_000


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """Stage 4: heuristic filters; each disabled by its own switch or an empty setting."""
  # (n, max fraction of characters inside word n-grams that occur more than once), Gopher's
  # values (Rae et al. 2021, Table A1). Empty = off.
  dup_ngrams: tuple[tuple[int, float], ...] = (
      (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
  dirty_words_path: str = ""    # one word per line; empty = off
  dirty_max_frac: float = 0.02
  kl_enabled: bool = True
  kl_max: float = 0.0           # drop KL(doc || corpus) above this (nats); 0 = unused
  kl_quantile: float = 0.99     # and drop above this quantile of the corpus; 0 or 1 = unused
  kl_buckets: int = 1 << 20     # hashed word vocabulary of the corpus distribution
  kl_min_words: int = 1


@dataclasses.dataclass(frozen=True)
class LangIdConfig:
  """Stage 5a: keep documents whose predicted language is allowed (off without a model)."""
  model_path: str = ""          # .npz from `python -m experiments.curate --train-langid ...`
  allowed: tuple[str, ...] = ("en",)
  min_prob: float = 0.5

  def __post_init__(self):
    # `--config.langid.allowed=en,fr` arrives as ("en,fr",); split it into languages.
    langs = (self.allowed,) if isinstance(self.allowed, str) else self.allowed
    object.__setattr__(self, "allowed", tuple(
        lang.strip() for entry in langs for lang in entry.split(",") if lang.strip()))


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  """Stage 5b: keep documents a linear quality classifier scores at or above `min_score`."""
  model_path: str = ""          # .npz from `python -m experiments.curate --train-quality ...`
  min_score: float = 0.5


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
  """How the staged pipeline cuts its global stages into units (stages.py). Results never
  depend on it; memory per task does: a URL, band-key or line-hash range holds the keys of
  about `docs_per_unit` documents (16-24 B each), so it stays flat as the corpus grows."""
  docs_per_unit: int = 1_000_000


@dataclasses.dataclass(frozen=True)
class CurationConfig:
  read: ReadConfig = ReadConfig()
  url_dedup: UrlDedupConfig = UrlDedupConfig()
  minhash: MinHashConfig = MinHashConfig()
  line_dedup: LineDedupConfig = LineDedupConfig()
  filters: FilterConfig = FilterConfig()
  langid: LangIdConfig = LangIdConfig()
  quality: QualityConfig = QualityConfig()
  partitions: PartitionConfig = PartitionConfig()
  workers: int = 0              # processes; 0 = all CPUs, 1 = in this process

  def __post_init__(self):
    m, problems = self.minhash, []
    if m.num_perms <= 0 or m.bands <= 0 or m.num_perms % m.bands:
      problems.append(f"minhash.num_perms={m.num_perms} must be a positive multiple of "
                      f"minhash.bands={m.bands}")
    if m.shingle_size <= 0:
      problems.append(f"minhash.shingle_size={m.shingle_size} must be positive")
    if not 0.0 < m.threshold <= 1.0:
      problems.append(f"minhash.threshold={m.threshold} must be in (0, 1]")
    if self.line_dedup.bucket_docs <= 0 or self.line_dedup.max_count <= 0:
      problems.append("line_dedup.bucket_docs and line_dedup.max_count must be positive")
    if not 0.0 <= self.filters.kl_quantile <= 1.0:
      problems.append(f"filters.kl_quantile={self.filters.kl_quantile} must be in [0, 1]")
    if any(n <= 0 for n, _ in self.filters.dup_ngrams):
      problems.append(f"filters.dup_ngrams={self.filters.dup_ngrams}: n must be positive")
    if self.filters.kl_buckets <= 0:
      problems.append(f"filters.kl_buckets={self.filters.kl_buckets} must be positive")
    if self.partitions.docs_per_unit <= 0:
      problems.append(f"partitions.docs_per_unit={self.partitions.docs_per_unit} must be "
                      "positive")
    if self.workers < 0:
      problems.append(f"workers={self.workers} must be >= 0")
    if problems:
      raise ValueError("Invalid CurationConfig: " + "; ".join(problems))

  @classmethod
  def from_dict(cls, d: dict) -> "CurationConfig":
    """Nested plain dicts (e.g. `ConfigDict.to_dict()`) -> config; unknown keys raise."""
    return from_dict(cls, d)
