"""Pre-training data curation, after "The Llama 3 Herd of Models" §3.1.1 (numpy only, no JAX).

  python -m experiments.curate --input raw/ --out clean/          # all defaults
  python -m experiments.curate --input raw/ --out clean/ --strict --workers 8 \
      --config.minhash.threshold=0.8 --config.filters.dirty_words_path=words.txt
  python -m experiments.curate --input raw/ --out clean/ --executor ray --tasks 64
  python -m experiments.curate --input raw/ --out clean/ --executor slurm --tasks 512

Stages, in order, each switchable (config.py has the defaults and their reasons):
  1. URL dedup: one document per URL, the newest by timestamp (else the first seen).
  2. Near-duplicates: MinHash over word 5-grams, LSH banding, verified candidates, union-find;
     the first document of each cluster stays (minhash.py).
  3. Line dedup: lines in more than 6 documents of a 100k-document bucket go (lines.py).
  4. Heuristics: duplicated n-gram coverage, dirty-word fraction, KL(doc || corpus) outliers
     (filters.py).
  5. Optional, off by default: language ID (langid.py) and a linear quality classifier
     (quality.py), each trained on the user's labelled JSONL.

stages.py cuts them into stages of tasks joined by files (per input file, per key range, a few
one-unit merges), with no stage holding all documents' signatures or line hashes; tasks.py
runs a task and leaves completion markers; executors.py runs the tasks on a process pool, Ray
or SLURM job arrays; pipeline.py is `curate`. reference.py is the single-process version the
staged one is tested against. reader.py turns malformed lines into counted skips (or, strict,
errors naming file and line).
"""

from llama3_jax.data.curation.config import CurationConfig
from llama3_jax.data.curation.pipeline import STAGES, curate
from llama3_jax.data.curation.reader import CurationInputError

__all__ = ["CurationConfig", "CurationInputError", "STAGES", "curate"]
