"""Robustness variants: labels, option order, few-shot label bias, prompt formats."""

import re

import pytest
from flax import nnx

from llama3_jax.data import corpus
from llama3_jax.data.tokenizers import load_tokenizer
from llama3_jax.eval import robustness, tasks
from llama3_jax.model import ModelConfig, Transformer
from tests.helpers import solve_arithmetic as solve


def test_rotated_options_move_the_gold():
  e = tasks.Example("What is 1 + 1?\nAnswer:", ("2", "3", "4", "5"), 0, 0)
  for k in range(4):
    v = robustness.lettered(e, robustness._rotation(4, k))
    shown = dict(re.findall(r"^([A-D])\. (\S+)$", v.query, re.M))
    assert shown[v.choices[v.gold]] == "2"                     # the gold label shows "2"
    assert v.query.startswith("What is 1 + 1?\nA. ") and v.query.endswith("\nAnswer:")
  v = robustness.lettered(e, range(4), "œ§зü", ".")
  assert v.choices == tuple("œ§зü") and "\nз. 4\n" in v.query


@pytest.mark.parametrize("pattern", robustness.BIAS_PATTERNS)
def test_label_bias_shots_follow_the_pattern(pattern):
  examples = tasks.arithmetic_task(12)
  context = robustness.biased_context(examples[0], examples, pattern, seed=3)
  shots = context.split("\n\n")[:-1]
  assert "".join(shot.rsplit(" ", 1)[1] for shot in shots) == pattern
  for shot in shots:   # each shot's answer label points at its correct option
    letter = shot.rsplit(" ", 1)[1]
    assert re.search(rf"^{letter}\. {solve(shot)}$", shot, re.M)


def test_report_has_every_variant_and_spreads():
  tokenizer = load_tokenizer(corpus.embedded_corpus() / "tokenizer.model")
  model = Transformer(ModelConfig(vocab_size=512, d_model=16, n_layers=1, n_heads=2,
                                  n_kv_heads=1, head_dim=8, ffn_dim=32, max_seq_len=512),
                      rngs=nnx.Rngs(0))
  report = robustness.robustness(model, tokenizer, tasks.arithmetic_task(16))
  assert len(report["variants"]) == 5 + 4 + 3 + 4 and report["n"] == 16
  assert set(report["families"]) == {"labels", "order", "prompt", "bias"}
  for family in report["families"].values():
    assert family["spread"] == pytest.approx(family["max"] - family["min"])
