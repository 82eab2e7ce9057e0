"""Build a Llama 3 model, print its parameter table, run a compiled forward pass.

    python -m experiments.demo                      # the debug model, on CPU in seconds
    python -m experiments.demo --size llama3-405b   # shapes only (jax.eval_shape): no memory
    python -m experiments.demo --attention blockwise --seq-len 1024

The main job until the pre-training launcher lands.
"""

import math
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llama3_jax import cli
from llama3_jax.model import SIZES, Transformer
from llama3_jax.model.summary import parameter_table


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="debug", choices=sorted(SIZES))
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--attention", default="reference", choices=["reference", "blockwise"])
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  config = SIZES[args.size].replace(attention=args.attention)
  if args.size != "debug":
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(args.seed)))
    print(f"{args.size} (abstract: shapes only, nothing allocated)\n{parameter_table(model)}")
    return

  model = Transformer(config, rngs=nnx.Rngs(args.seed))
  print(f"{args.size}: {config}\n\n{parameter_table(model)}\n")
  tokens = jax.random.randint(jax.random.key(args.seed), (args.batch, args.seq_len + 1), 0,
                              config.vocab_size)

  @nnx.jit
  def loss_fn(model, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  start = time.perf_counter()
  loss = float(loss_fn(model, tokens))
  compiled = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(loss_fn(model, tokens))
  step = time.perf_counter() - start
  print(f"forward on {args.batch}x{args.seq_len} random tokens ({jax.devices()[0].platform}): "
        f"loss {loss:.4f} (uniform guess: ln V = {math.log(config.vocab_size):.4f}); "
        f"compile+run {compiled:.2f} s, run {step * 1e3:.1f} ms")


if __name__ == "__main__":
  cli.run(main)
