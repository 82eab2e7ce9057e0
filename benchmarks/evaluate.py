"""Evaluation speed: batched shared-context multiple choice against one continuation per pass,
and the contamination index's build and lookup throughput.

python -m benchmarks.evaluate            # one CPU device; about a minute on 2 cores

Multiple choice on the shipped arithmetic task (4 choices) with the debug model: examples/s of
`multiple_choice.loglikelihoods` (8 rows per pass, each row one example's context with all its
choices) against a naive loop that runs context + choice through the model for each choice
alone (the reading of the harness without batching), in the same run, A B A B; the two give the
same log-likelihoods (checked). Then the Bloom filter of token 8-grams: tokens/s to build it
from the embedded corpus, and lookups/s.
"""

import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from llama3_jax.data import corpus  # noqa: E402
from llama3_jax.data.tokenizers import load_tokenizer  # noqa: E402
from llama3_jax.eval import multiple_choice as mc  # noqa: E402
from llama3_jax.eval import tasks  # noqa: E402
from llama3_jax.eval.contamination import NgramIndex  # noqa: E402
from llama3_jax.model import SIZES, Transformer  # noqa: E402

N = 96


@nnx.jit
def _sequence_logp(model, ids):
  logp = jax.nn.log_softmax(model(ids[None])[0].astype(jnp.float32), -1)
  return logp


def naive(model, tokenizer, examples):
  """One forward pass per (example, choice), padded to a 64-token bucket (one compile)."""
  out = []
  for e in examples:
    lls = []
    for choice in e.choices:
      ctx, cont = mc.encode_pair(tokenizer, e.query, " " + choice)
      ids = np.zeros(64, np.int32)
      seq = ctx + cont
      ids[:len(seq)] = seq
      logp = np.asarray(_sequence_logp(model, jnp.asarray(ids)))
      lls.append(float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))))
    out.append(lls)
  return out


def main():
  tokenizer = load_tokenizer(corpus.embedded_corpus() / "tokenizer.model")
  model = Transformer(SIZES["debug"], rngs=nnx.Rngs(0))
  examples = tasks.arithmetic_task(N)
  mc.loglikelihoods(model, tokenizer, examples[:8])   # compile both
  naive(model, tokenizer, examples[:1])
  times = {"batched": [], "naive": []}
  for _ in range(2):   # A B A B
    start = time.perf_counter()
    batched = mc.loglikelihoods(model, tokenizer, examples)
    times["batched"].append(time.perf_counter() - start)
    start = time.perf_counter()
    reference = naive(model, tokenizer, examples)
    times["naive"].append(time.perf_counter() - start)
  error = max(abs(a - b) for x, y in zip(batched, reference) for a, b in zip(x, y))
  rate = {k: N / min(v) for k, v in times.items()}
  print(f"multiple choice, {N} examples x 4 choices, debug model, {jax.devices()[0].platform}:")
  print("| scorer | examples/s | speed-up |\n|---|---|---|")
  print(f"| naive: one pass per choice | {rate['naive']:.1f} | 1.00x |")
  print(f"| batched, shared context | {rate['batched']:.1f} | "
        f"{rate['batched'] / rate['naive']:.2f}x |")
  print(f"max |log-likelihood difference| {error:.2e}")

  start = time.perf_counter()
  index = NgramIndex.from_prepared(corpus.embedded_corpus())
  build = time.perf_counter() - start
  probe = np.random.default_rng(0).integers(0, 512, 200_000)
  start = time.perf_counter()
  index.contains(probe)
  lookup = time.perf_counter() - start
  print(f"8-gram Bloom filter: {index.added:,} 8-grams, {index.bits / 8 / 2**20:.1f} MiB, "
        f"{index.hashes} hashes, false-positive rate {index.false_positive_rate:.1e}")
  print("| build (tokens/s) | lookup (8-grams/s) |\n|---|---|")
  print(f"| {index.added / build:,.0f} | {probe.size / lookup:,.0f} |")


if __name__ == "__main__":
  main()
