"""Data curation (report §3.1.1) with the library's defaults; `arg` picks a variant.

python -m experiments.curate --input raw/ --out clean/ \
    --config experiments/configs/curation.py:dedup_only --config.minhash.threshold=0.8

Variants: "" (everything on except the model-based stages), "dedup_only" (URL, MinHash and
line dedup; no heuristic filters), "small" (buckets and workers for a laptop-sized corpus).
`partitions.docs_per_unit` sets how many documents' keys one task of a range stage holds
(memory per task; never the result): lower it for small nodes, e.g.
--config.partitions.docs_per_unit=200000.
"""

import dataclasses

import ml_collections

from llama3_jax.data.curation.config import CurationConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dataclasses.asdict(CurationConfig()))
  for variant in filter(None, (arg or "").split(",")):
    if variant == "dedup_only":
      c.filters.dup_ngrams = ()
      c.filters.dirty_words_path = ""
      c.filters.kl_enabled = False
    elif variant == "small":
      c.line_dedup.bucket_docs = 10_000
      c.workers = 2
    else:
      raise ValueError(f"unknown curation config variant {variant!r}; known: dedup_only, small")
  return c
