"""Multiple-choice scoring: each choice's summed log-likelihood after its context."""

import jax
import numpy as np
import pytest
from flax import nnx

from llama3_jax.data import corpus
from llama3_jax.data.tokenizers import load_tokenizer
from llama3_jax.eval import multiple_choice as mc
from llama3_jax.model import Transformer
from llama3_jax.scaling import family


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer(corpus.embedded_corpus() / "tokenizer.model")


def test_arithmetic_examples_have_one_true_answer_among_four():
  examples = mc.arithmetic_examples(100, seed=3)
  assert examples == mc.arithmetic_examples(100, seed=3)   # seeded
  for ex in examples:
    a, op, b = ex.context.split("?")[0].split()[-3:]
    value = int(a) + int(b) if op == "+" else int(a) - int(b)
    assert len(set(ex.choices)) == 4 and ex.choices[ex.answer] == f" {value}"
  assert 0.15 < np.mean([ex.answer == 0 for ex in examples]) < 0.35   # answers shuffled


def test_scores_are_the_choice_tokens_log_likelihood(tokenizer):
  model = Transformer(family.family_config(15_000), rngs=nnx.Rngs(0))
  examples = mc.arithmetic_examples(1)   # 4 rows, checked one by one, unjitted
  scores = mc.score_choices(model, tokenizer, examples, batch_rows=8)
  for ex, got in zip(examples, scores):
    context = tokenizer.encode(ex.context, bos=True)
    for choice, score in zip(ex.choices, got):
      full = tokenizer.encode(ex.context + choice, bos=True)
      assert full[:len(context)] == context
      logp = jax.nn.log_softmax(model(np.asarray([full[:-1]])), -1)[0]
      want = sum(float(logp[i - 1, full[i]]) for i in range(len(context), len(full)))
      assert score == pytest.approx(want, rel=1e-5, abs=1e-5)
  result = mc.evaluate_choices(model, tokenizer, examples)
  assert result["chance"] == 0.25 and 0 <= result["accuracy"] <= 1
  assert result["nll_per_char"] > 0
