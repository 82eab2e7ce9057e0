"""Multiple choice by log-likelihood, with lm-evaluation-harness's definitions, batch-invariant.

    scores = score_task(model, tokenizer, examples, shots=5, seed=1234)
    scores["acc"], scores["acc_ci"], scores["samples"][0]["loglikelihoods"]

Per example and choice, as the harness's `loglikelihood` does: the context is
`<|begin_of_text|>` + the k shots and the query joined by "\\n\\n"; the continuation is
" " + choice (a trailing space of the context moves into it); context and context +
continuation are encoded, and the continuation's tokens are the tail of the second after the
first's length; its log-likelihood is the sum of their log-probs given the context's tokens.
`acc` takes the highest log-likelihood, `acc_norm` the highest per character of the choice;
`gold_nll_per_char` (the scaling-law forecast's input) is the correct choice's negative
log-likelihood per character. Intervals are the report's §5.1.1 95% interval,
1.96 sqrt(S (1 - S) / N); MMLU-style tasks with subjects are macro-averaged over them.

One row per example: the context once, then every choice attending to it and to itself only
(shared-prefix segment ids, llama3_jax/model/attention_ops.py), so the context is encoded once
for all choices. Every forward pass has the same shape (a fixed number of rows, lengths in
power-of-two buckets, fp32 log-softmax), so a score does not depend on the batch size or on
which other examples share the batch. On a mesh (the model's parameters sharded:
llama3_jax/infer/placement.py) the rows are split over its data-like axes, padded to a multiple
of them, and the scores gathered to every process: one device's scores on any layout.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llama3_jax.eval.stats import interval
from llama3_jax.eval.tasks import Example
from llama3_jax.infer.placement import Placement
from llama3_jax.model.attention_ops import shared_prefix_segments

ROWS = 8          # rows per forward pass, whatever the batch size asked for
MIN_BUCKET = 32


def few_shot_context(example: Example, pool: list[Example], shots: int, seed: int) -> str:
  """The k shots (drawn from `pool` without the example itself, seeded by the example's
  index) and the query, joined by blank lines."""
  if shots == 0:
    return example.query
  others = [e for e in pool if e.index != example.index]
  if len(others) < shots:
    raise ValueError(f"{shots} shots asked for, but the task has only {len(others)} other "
                     "examples; use fewer --shots")
  chosen = random.Random(seed * 1_000_003 + example.index).sample(others, shots)
  return "\n\n".join([e.shot for e in chosen] + [example.query])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """lm-evaluation-harness's `_encode_pair`, BOS first: (context ids, continuation ids)."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  whole = tokenizer.encode(context + continuation)
  context_ids = tokenizer.encode(context)
  return [tokenizer.bos_id] + context_ids, whole[len(context_ids):]


def _bucket(n: int) -> int:
  return max(MIN_BUCKET, 1 << (n - 1).bit_length())


def example_row(context_ids, continuations, length: int) -> dict:
  """One row: the context (segment 1), then choice j (a response of segment 1, positions
  after the context); `choice` marks choice j's targets with j + 1."""
  ctx = np.asarray(context_ids, np.int32)
  start = ctx.size - 1
  # (inputs, targets, first position, segment id, choice mark) per piece
  pieces = [(ctx[:-1], ctx[1:], 0, 1, 0)]
  for j, cont in enumerate(continuations):
    cont = np.asarray(cont, np.int32)
    pieces.append((np.r_[ctx[-1:], cont[:-1]], cont, start, shared_prefix_segments(1, j + 1),
                   j + 1))
  row = {"inputs": np.concatenate([p[0] for p in pieces]),
         "targets": np.concatenate([p[1] for p in pieces]),
         "positions": np.concatenate([np.arange(p[2], p[2] + p[0].size) for p in pieces]),
         "segment_ids": np.concatenate([np.full(p[0].size, p[3]) for p in pieces]),
         "choice": np.concatenate([np.full(p[0].size, p[4]) for p in pieces])}
  n = row["inputs"].size
  if n > length:
    raise ValueError(f"a row of {n} tokens does not fit {length}")
  return {name: np.pad(value.astype(np.int32), (0, length - n)) for name, value in row.items()}


@nnx.jit(static_argnames="choices")
def _choice_loglikelihoods(model, batch, choices: int):
  """[R, choices] summed log-probs of each choice's tokens (fp32 log-softmax)."""
  logits_btv = model(batch["inputs"], batch["segment_ids"], batch["positions"])
  logp_btv = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
  logp_bt = jnp.take_along_axis(logp_btv, batch["targets"][..., None], axis=-1)[..., 0]
  one_hot_btc = jax.nn.one_hot(batch["choice"] - 1, choices, dtype=jnp.float32)
  return jnp.einsum("bt,btc->bc", logp_bt, one_hot_btc)


def loglikelihoods(model, tokenizer, examples: list[Example], *, shots: int = 0,
                   seed: int = 1234, pool: list[Example] | None = None,
                   batch_size: int = ROWS) -> list[list[float]]:
  """Per example, one summed log-likelihood per choice (in the example's order).
  `batch_size` rows are scored per call, padded to ROWS (or a multiple of the mesh's row
  shards): the results do not depend on it."""
  if not 1 <= batch_size <= ROWS:
    raise ValueError(f"batch_size={batch_size}; use 1..{ROWS}")
  pool = examples if pool is None else pool
  max_len = model.config.max_seq_len
  choices = max(len(e.choices) for e in examples)
  requests = []
  for e in examples:
    context = few_shot_context(e, pool, shots, seed)
    pairs = [encode_pair(tokenizer, context, " " + c) for c in e.choices]
    ctx = pairs[0][0]
    conts = [cont for _, cont in pairs]
    need = len(ctx) - 1 + sum(len(c) for c in conts)
    if need > max_len:   # as the harness: the context loses tokens on the left (BOS kept)
      cut = need - max_len
      if cut >= len(ctx) - 2:
        raise ValueError(f"example {e.index}: its choices alone need {need - len(ctx)} tokens, "
                         f"more than the model's max_seq_len {max_len}")
      ctx = ctx[:1] + ctx[1 + cut:]
      need = max_len
    requests.append((_bucket(need) if _bucket(need) <= max_len else max_len, ctx, conts))
  out = [None] * len(examples)
  placement = Placement.of(model)
  rows_per_call = placement.padded_rows(ROWS)
  # A call scores rows of one length bucket only: an example's row always has the same shape.
  for length in sorted({r[0] for r in requests}):
    members = [i for i, r in enumerate(requests) if r[0] == length]
    for start in range(0, len(members), batch_size):
      group = members[start:start + batch_size]
      rows = [example_row(requests[i][1], requests[i][2], length) for i in group]
      padding = example_row([tokenizer.bos_id, tokenizer.bos_id], [], length)
      rows += [padding] * (rows_per_call - len(rows))
      batch = {k: placement.rows(np.stack([r[k] for r in rows])) for k in rows[0]}
      with placement.active():
        sums = placement.fetch(_choice_loglikelihoods(model, batch, choices))
      for row, i in enumerate(group):
        out[i] = sums[row, :len(examples[i].choices)].astype(float).tolist()
  return out


def metrics(examples: list[Example], lls: list[list[float]]) -> dict:
  """acc, acc_norm, gold_nll_per_char (means; macro over subjects if any) and intervals."""
  acc = np.array([int(np.argmax(ll)) == e.gold for e, ll in zip(examples, lls)], float)
  norm = np.array([int(np.argmax(np.array(ll) / [len(c) for c in e.choices])) == e.gold
                   for e, ll in zip(examples, lls)], float)
  nll = np.array([-ll[e.gold] / len(e.choices[e.gold]) for e, ll in zip(examples, lls)])
  subjects = sorted({e.subject for e in examples})
  if len(subjects) > 1:
    by = lambda values: float(np.mean([values[[e.subject == s for e in examples]].mean()
                                       for s in subjects]))
  else:
    by = lambda values: float(values.mean())
  n = len(examples)
  out = {"acc": by(acc), "acc_norm": by(norm), "gold_nll_per_char": by(nll), "n": n,
         "chance": float(np.mean([1 / len(e.choices) for e in examples]))}
  out["acc_ci"], out["acc_norm_ci"] = interval(out["acc"], n), interval(out["acc_norm"], n)
  if len(subjects) > 1:
    out["subjects"] = len(subjects)
  return out


def score_task(model, tokenizer, examples: list[Example], *, shots: int = 0, seed: int = 1234,
               batch_size: int = ROWS, task: str = "") -> dict:
  """Metrics plus per-example samples (task, index, gold, loglikelihoods)."""
  lls = loglikelihoods(model, tokenizer, examples, shots=shots, seed=seed,
                       batch_size=batch_size)
  samples = [{"task": task, "index": e.index, "gold": e.gold, "loglikelihoods": ll}
             for e, ll in zip(examples, lls)]
  return {**metrics(examples, lls), "shots": shots, "samples": samples}
