"""eval.every_steps: task scores in the metrics rows, equal to scoring the checkpoint after."""

import pytest

from llama3_jax.checkpoint.model import load_model, run_tokenizer
from llama3_jax.eval import generative, multiple_choice, tasks
from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from llama3_jax.train.metrics import read_metrics
from llama3_jax.train.plan import make_plan
from tests.helpers import tiny_run_config


@pytest.mark.slow
def test_scores_go_into_the_rows_and_match_the_checkpoint(tmp_path):
  cfg = tiny_run_config(steps=4)
  cfg.eval.update(every_steps=2, tasks="heldout,arith,arith_gen", examples=24)
  train(run_config(cfg), tmp_path)
  rows = {r["step"]: r for r in read_metrics(tmp_path)}
  assert [s for s, r in rows.items() if "eval/arith/acc" in r] == [2, 4]
  _, model = load_model(tmp_path / "checkpoints" / "4")
  examples = tasks.arithmetic_task()[:24]
  lls = multiple_choice.loglikelihoods(model, run_tokenizer(tmp_path), examples)
  expected = multiple_choice.metrics(examples, lls)
  for key in ("acc", "acc_norm", "gold_nll_per_char"):
    assert rows[4][f"eval/arith/{key}"] == pytest.approx(expected[key], rel=1e-5)
  from llama3_jax.eval import perplexity
  heldout = perplexity.evaluate(model, perplexity.heldout_rows(seq_len=64, rows_per_source=16))
  assert rows[4]["eval/heldout/loss"] == pytest.approx(heldout["loss"], rel=1e-5)
  assert {f"eval/heldout/{s}_loss" for s in heldout["per_source"]} <= set(rows[4])
  name, examples, settings = generative.read_task("arith_gen")
  expected = generative.score_generative(model, run_tokenizer(tmp_path), examples[:24], settings)
  assert rows[4]["eval/arith_gen/exact_match"] == expected["exact_match"]
  assert "eval/arith_gen/exact_match" in rows[2]


def test_eval_steps_must_fall_on_metrics_rows():
  cfg = tiny_run_config(steps=4)
  cfg.log.every_steps = 2
  cfg.eval.every_steps = 3
  with pytest.raises(ValueError, match="eval.every_steps=3 is not a multiple of log.every_steps"):
    make_plan(run_config(cfg), 8)
