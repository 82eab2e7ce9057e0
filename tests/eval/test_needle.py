"""Needle in a haystack: prompts hold the fact at the asked depth; scoring and the heat map."""

import random
import re

import numpy as np
import pytest
from flax import nnx

from llama3_jax.eval import needle
from llama3_jax.infer.generate import Result
from llama3_jax.model import ModelConfig, Transformer




@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_the_needle_sits_at_its_depth(tokenizer, depth):
  haystack = needle.haystack_tokens(tokenizer, 5000)
  ids, answer = needle.needle_prompt(tokenizer, haystack, 400, depth, random.Random(1))
  assert abs(len(ids) - 400) <= 1 and ids[0] == tokenizer.bos_id
  text = tokenizer.decode(ids[1:])
  position = text.index("The magic number of")
  body = text[:text.rindex("What is the magic number")]
  assert abs(position / len(body) - depth) < 0.1
  assert f"is {answer}." in text and text.rstrip().endswith("is")


def test_grid_scores_answers_and_plots(tokenizer, tmp_path, monkeypatch):
  model = Transformer(ModelConfig(vocab_size=512, d_model=16, n_layers=1, n_heads=2,
                                  n_kv_heads=1, head_dim=8, ffn_dim=32, max_seq_len=512),
                      rngs=nnx.Rngs(0))
  grid = needle.needle_grid(model, tokenizer, lengths=(128, 256), depths=(0.0, 1.0), trials=2)
  assert np.array(grid["accuracy"]).shape == (2, 2) and 0 <= grid["acc"] <= 1

  def oracle(self, prompts, **kwargs):   # answers every needle: the scoring must say 1.0
    answers = [re.findall(r"is (\d{4})\.", tokenizer.decode(p))[0] for p in prompts]
    return [Result(p, [tokenizer.encode(" " + a)], [True]) for p, a in zip(prompts, answers)]

  monkeypatch.setattr(needle.Generator, "generate", oracle)
  grid = needle.needle_grid(model, tokenizer, lengths=(128,), depths=(0.5,), trials=3)
  assert grid["acc"] == 1.0
  needle.plot(grid, tmp_path / "needle.png")
  assert (tmp_path / "needle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="exceeds the model's context"):
    needle.needle_grid(model, tokenizer, lengths=(600,), depths=(0.5,))
