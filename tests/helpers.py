"""Helpers the tests share: the tiny model, comparing trees, tiny batches, a few training steps,
tiny run configs. (Fixtures, e.g. the embedded corpus' tokenizer: tests/conftest.py.)

Equivalence tests compare a layout (sharded, pipelined, context-split, micro-batched) with one
device: fp32 on CPU differs only in the order of reductions, ~1e-7..1e-6 relative; 1e-5
relative to the largest element of each array leaves a margin and still catches any wrong
layout or mask (those give O(1e-2) or larger differences).
"""

import dataclasses
import re

import jax
import numpy as np

from llama3_jax.model import ModelConfig
from llama3_jax.optim.optimizer import build_optimizer
from llama3_jax.sharding import MeshConfig, ShardingConfig
from llama3_jax.train.config import default_config
from llama3_jax.train.setup import setup

# The tiny model of the tests that read text: the embedded corpus' 512-token vocabulary, 4 query
# heads on 2 KV heads (GQA), odd sizes that catch shape mix-ups.
TINY = ModelConfig(vocab_size=512, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=6,
                   ffn_dim=40, max_seq_len=256, init_std=0.2)

RTOL = 1e-5
# Adam divides by sqrt(v) + eps: with the default eps=1e-8 a gradient element at the ~1e-8
# reduction-order noise level moves its weight by a full `lr` in either direction, so parameters
# after a few steps would differ by O(lr) for reasons that have nothing to do with sharding.
# eps=1e-3 bounds that amplification (lr / eps = 10) while every moment is still sharded and
# updated exactly as in training.
OPTIMIZER = build_optimizer(eps=1e-3)
LR = 1e-2


def max_rel_error(a, b) -> float:
  """The largest |a - b| of any array of two trees, relative to the largest |b| of that array."""
  return max(np.abs(np.asarray(x) - np.asarray(y)).max() / max(np.abs(np.asarray(y)).max(), 1e-6)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def assert_trees_close(a, b, rtol=RTOL):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape, (x.shape, y.shape)
    assert np.abs(x - y).max() <= rtol * max(np.abs(y).max(), 1e-6), np.abs(x - y).max()


def lm_batch(vocab_size: int, seed: int = 0, B: int = 8, T: int = 16) -> dict:
  """Rows of three documents (5, 7 and T - 12 tokens), the last 3 targets of each row masked."""
  r = np.random.RandomState(seed)
  tokens = r.randint(0, vocab_size, (B, T + 1))
  segments = np.repeat([[1, 2, 3]], [5, 7, T - 12], axis=1).repeat(B, axis=0)
  mask = np.ones((B, T), np.float32)
  mask[:, -3:] = 0   # padding at the end of each row
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
          "loss_mask": mask}


@dataclasses.dataclass
class Trained:
  loss: float        # the loss of one batch before any step
  grads: object      # its gradients
  losses: list       # the losses of `steps` AdamW steps
  params: object     # the parameters after them


def train_steps(model, mesh_config: MeshConfig, sharding: ShardingConfig = ShardingConfig(), *,
                micro_batches: int = 1, devices=None, steps: int = 3, B: int = 8) -> Trained:
  """Loss and gradients of one batch, then `steps` AdamW steps (all on host afterwards)."""
  s = setup(model, mesh_config, sharding=sharding, optimizer=OPTIMIZER,
            micro_batches=micro_batches, devices=devices)
  state = s.init_state()
  loss, grads = s.fns.loss_and_grads(state, lm_batch(model.vocab_size, B=B))
  losses = []
  for i in range(steps):
    state, metrics = s.fns.train(state, lm_batch(model.vocab_size, seed=i, B=B), LR)
    losses.append(float(metrics["loss"]))
  return Trained(float(loss), jax.device_get(grads), losses, jax.device_get(state["model"]))


def assert_same_training(run: Trained, reference: Trained, rtol=RTOL):
  np.testing.assert_allclose(run.loss, reference.loss, rtol=rtol)
  assert_trees_close(run.grads, reference.grads, rtol)
  np.testing.assert_allclose(run.losses, reference.losses, rtol=rtol)
  assert_trees_close(run.params, reference.params, rtol)


def tiny_run_config(steps: int = 6, stages=((3 * 8 * 16, 8 * 16, 16), (None, 8 * 32, 32)),
                    **mesh):
  """A launcher config of a 2-layer model on the embedded corpus: seconds per run on CPU.
  `stages`: (until_tokens, batch_tokens, seq_len) each; `mesh`: axis sizes (fsdp fills)."""
  c = default_config()
  c.model.update(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                 ffn_dim=48, max_seq_len=64)
  c.mesh.update({"fsdp": -1, **mesh})
  c.train.update(steps=steps, warmup_tokens=2 * 128, anneal_tokens=2 * 256, peak_lr=1e-2,
                 stages=tuple(dict(until_tokens=u, batch_tokens=b, seq_len=t)
                              for u, b, t in stages))
  c.checkpoint.update(every_steps=1, max_to_keep=20, async_save=True)
  c.log.every_steps = 1
  c.mfu.peak_flops = 1e12
  return c


def solve_arithmetic(query: str) -> int:
  """The answer to a shipped arith question: its last `a op b`, computed."""
  a, op, b = re.findall(r"(\d+) ([-+*/]) (\d+)", query)[-1]
  a, b = int(a), int(b)
  return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
