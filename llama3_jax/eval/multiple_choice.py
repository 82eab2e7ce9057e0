"""Multiple-choice scoring by log-likelihood, and a small arithmetic task from the math source.

    examples = arithmetic_examples(count=200)         # [Example(context, choices, answer)]
    loglik = score_choices(model, tokenizer, examples)   # [[summed log p(choice | context)]]
    result = evaluate_choices(model, tokenizer, examples)  # accuracy, nll_per_char

Each choice is scored as the summed log-likelihood of its tokens after the context (the context
starts with BOS); the prediction is the best-scoring choice. `nll_per_char` is the negative
log-likelihood of the correct answer divided by its characters, averaged over examples: the
"normalised NLL of the correct answer" of the Llama 3 report's two-step forecast (§3.2.1).
The model runs in fp32 on rows of `seq_len` tokens in batches of `batch_rows` (same shapes every
call). Kept small and general: the evaluation issue grows the tasks around it.

The arithmetic task asks the embedded corpus' math questions ("What is 512 + 89?\nAnswer:")
with the true answer and three near misses (off by 1, by 10, and with two digits swapped or
off by 100), from a seed the training corpus never uses.
"""

import dataclasses
import random

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from llama3_jax.eval.perplexity import fp32


@dataclasses.dataclass(frozen=True)
class Example:
  context: str
  choices: tuple[str, ...]
  answer: int               # index of the correct choice


def arithmetic_examples(count: int = 200, seed: int = 2000) -> list[Example]:
  """Addition and subtraction questions in the math source's own format, four choices each."""
  rng = random.Random(seed)
  out = []
  for _ in range(count):
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    if rng.random() < 0.5:
      question, value = f"What is {a} + {b}?", a + b
    else:
      a, b = max(a, b), min(a, b)
      question, value = f"What is {a} - {b}?", a - b
    wrong = {value + rng.choice((-1, 1)), value + rng.choice((-10, 10))}
    digits = str(value)
    swapped = digits[:-2] + digits[-1] + digits[-2] if len(digits) >= 2 else digits
    wrong.add(int(swapped) if swapped != digits and int(swapped) != value else value + 100)
    wrong = sorted(w for w in wrong if w >= 0 and w != value)
    while len(wrong) < 3:
      wrong.append(value + 100 * (len(wrong) + 1))
    choices = [f" {value}"] + [f" {w}" for w in wrong[:3]]
    rng.shuffle(choices)
    out.append(Example(f"{question}\nAnswer:", tuple(choices), choices.index(f" {value}")))
  return out


def _rows(tokenizer, examples, seq_len: int):
  """Token rows (context + choice) with a mask on the choice's targets."""
  inputs, targets, mask = [], [], []
  for ex in examples:
    context = tokenizer.encode(ex.context, bos=True)
    for choice in ex.choices:
      full = tokenizer.encode(ex.context + choice, bos=True)
      # The choice's tokens: what follows the context's own tokens where they are a prefix
      # (SentencePiece may merge across the boundary; then the choice is encoded alone).
      if full[:len(context)] == context:
        tokens, start = full, len(context)
      else:
        tokens, start = context + tokenizer.encode(choice), len(context)
      tokens = tokens[-(seq_len + 1):]
      start = max(1, start - (len(full) - len(tokens)))
      row_in = np.zeros(seq_len, np.int32)
      row_t = np.zeros(seq_len, np.int32)
      row_m = np.zeros(seq_len, np.float32)
      n = len(tokens) - 1
      row_in[:n], row_t[:n] = tokens[:-1], tokens[1:]
      row_m[start - 1:n] = 1.0   # targets at positions start..end are the choice's tokens
      inputs.append(row_in)
      targets.append(row_t)
      mask.append(row_m)
  return np.stack(inputs), np.stack(targets), np.stack(mask)


def score_choices(model, tokenizer, examples, seq_len: int = 64, batch_rows: int = 32
                  ) -> list[list[float]]:
  """Per example, the summed log-likelihood of each choice's tokens after the context."""
  inputs, targets, mask = _rows(tokenizer, examples, seq_len)
  pad = -len(inputs) % batch_rows
  if pad:
    inputs, targets, mask = (np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                             for x in (inputs, targets, mask))
  graphdef, state = fp32(model)
  scores = []
  for start in range(0, len(inputs), batch_rows):
    part = slice(start, start + batch_rows)
    scores.append(np.asarray(_logliks_for(graphdef)(state, inputs[part], targets[part],
                                                    mask[part])))
  flat = np.concatenate(scores)
  out, i = [], 0
  for ex in examples:
    out.append(flat[i:i + len(ex.choices)].tolist())
    i += len(ex.choices)
  return out


_COMPILED = {}


def _logliks_for(graphdef):
  """One jitted scorer per model structure (the graphdef is static)."""
  if graphdef not in _COMPILED:
    @jax.jit
    def run(state, inputs, targets, mask):
      model = nnx.merge(graphdef, state)
      logp_btv = jax.nn.log_softmax(model(inputs), axis=-1)
      picked_bt = jnp.take_along_axis(logp_btv, targets[..., None], axis=-1)[..., 0]
      return (picked_bt * mask).sum(-1)
    _COMPILED[graphdef] = run
  return _COMPILED[graphdef]


def evaluate_choices(model, tokenizer, examples, **kwargs) -> dict:
  """Accuracy (argmax of summed log-likelihood) and the correct answers' NLL per character."""
  scores = score_choices(model, tokenizer, examples, **kwargs)
  correct = [int(np.argmax(s)) == ex.answer for s, ex in zip(scores, examples)]
  nll = [-s[ex.answer] / len(ex.choices[ex.answer].strip()) for s, ex in zip(scores, examples)]
  return {"accuracy": float(np.mean(correct)), "nll_per_char": float(np.mean(nll)),
          "examples": len(examples), "chance": float(np.mean([1 / len(ex.choices)
                                                              for ex in examples]))}
