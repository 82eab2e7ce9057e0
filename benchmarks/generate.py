"""Generation speed: KV-cache decoding against recomputing the whole sequence, and prefix sharing.

python -m benchmarks.generate            # one CPU device; a few minutes on 2 cores

For the debug model and a 1B-shaped model (Llama 3.2 1B's width and vocabulary, 2 layers):
time to first token (prefill of 64-token prompts) and decode tokens/s for batch 1, 8 and 32,
against the same batch decoded naively (the full forward pass over the sequence so far, one
compile, each step) in the same run; then K = 16 samples of one prompt with one shared prefill
against 16 copies of the prompt prefilled separately; and the KV cache's bytes per token
against the formula 2 x layers x KV heads x head_dim x bytes.
"""

import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from llama3_jax.infer import kv_cache  # noqa: E402
from llama3_jax.infer.generate import Generator  # noqa: E402
from llama3_jax.model import SIZES, Transformer  # noqa: E402

PROMPT, NEW = 64, 32
MODELS = {"debug": SIZES["debug"],
          "1B-shaped, 2 layers": SIZES["llama3.2-1b"].replace(n_layers=2, max_seq_len=1024)}


def timed_generate(generator, prompts, **kwargs):
  """(time to first token, decode tokens/s, tokens) of one generate call."""
  first = []
  start = time.perf_counter()
  results = generator.generate(prompts, max_new_tokens=NEW,
                               on_tokens=lambda row, ids: first or first.append(
                                   time.perf_counter()), **kwargs)
  end = time.perf_counter()
  tokens = sum(len(t) for r in results for t in r.tokens)
  rows = sum(len(r.tokens) for r in results)
  return first[0] - start, (tokens - rows) / (end - first[0]), results


def naive_tokens_per_s(model, prompts):
  """Greedy decoding by the full forward pass over [B, PROMPT + NEW] (padded) each step."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens).argmax(-1))
  tokens = np.zeros((len(prompts), PROMPT + NEW), np.int32)
  tokens[:, :PROMPT] = prompts
  forward(state, tokens).block_until_ready()   # compiled outside the timing
  start = time.perf_counter()
  for t in range(PROMPT, PROMPT + NEW):
    tokens[:, t] = np.asarray(forward(state, tokens))[:, t - 1]
  return len(prompts) * NEW / (time.perf_counter() - start)


def main():
  print(f"{jax.devices()[0].device_kind} x{os.cpu_count()} cores, jax {jax.__version__}; "
        f"prompts of {PROMPT} tokens, {NEW} new tokens, greedy\n")
  print("| model | batch | time to first token | decode tok/s (cache) | decode tok/s (full "
        "recompute) | ratio |")
  print("|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for name, config in MODELS.items():
    model = Transformer(config, rngs=nnx.Rngs(0))
    generator = Generator(model, stop_ids=())
    for batch in (1, 8, 32):
      prompts = rng.integers(0, config.vocab_size, (batch, PROMPT)).tolist()
      timed_generate(generator, prompts)                    # compiles
      ttft, rate, _ = timed_generate(generator, prompts)
      naive = naive_tokens_per_s(model, prompts)
      print(f"| {name} | {batch} | {ttft * 1e3:.0f} ms | {rate:,.0f} | {naive:,.0f} | "
            f"{rate / naive:.1f}x |")
    print(f"| {name} | KV cache | {kv_cache.bytes_per_token(config):,} bytes/token (formula "
          f"{2 * config.n_layers * config.n_kv_heads * config.head_dim * 4:,}) | | | |")

  config = MODELS["debug"]
  model = Transformer(config, rngs=nnx.Rngs(0))
  generator = Generator(model, stop_ids=())
  prompt = rng.integers(0, config.vocab_size, 256).tolist()
  for _ in range(2):   # the first of each compiles
    start = time.perf_counter()
    generator.generate([prompt], max_new_tokens=NEW, samples=16)
    shared_s = time.perf_counter() - start
    start = time.perf_counter()
    generator.generate([prompt] * 16, max_new_tokens=NEW)
    copies_s = time.perf_counter() - start
  print(f"\nprefix sharing, debug model, one 256-token prompt x 16 samples, {NEW} new tokens: "
        f"shared prefill {shared_s:.2f} s, 16 prefills {copies_s:.2f} s "
        f"({copies_s / shared_s:.2f}x)")


if __name__ == "__main__":
  main()
