"""Generative tasks: answer extraction, stop strings, batch-invariant greedy generations equal to
the plain generator's, GSM8K's records, bad lines, the shipped arith_gen task."""

import json

import pytest
from flax import nnx

from llama3_jax.eval import generative as gen
from llama3_jax.eval import tasks
from llama3_jax.infer.generate import Generator
from llama3_jax.model import Transformer
from tests.helpers import TINY, solve_arithmetic as solve





@pytest.fixture(scope="module")
def model():
  return Transformer(TINY, rngs=nnx.Rngs(3))


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.mark.parametrize("text, expected", [
    ("so 3 + 4 = 7. The final answer is 1,234.", "1234"),
    ("The final answer is 18\nQuestion: 5", "18"),
    ("It costs 5 dollars, then 12,500 more.", "12500"),   # fallback: the last number
    ("-3.5 degrees", "-3.5"),
    ("no number here", None),
])
def test_extract_takes_the_pattern_else_the_last_number(text, expected):
  assert gen.extract(text) == expected


def test_extract_fallbacks_and_normalise():
  assert gen.extract("Paris.", gen.GenerationConfig(fallback="text")) == "Paris"
  assert gen.extract("7 apples", gen.GenerationConfig(fallback="none")) is None
  assert gen.extract("x = 42", gen.GenerationConfig(pattern=r"= (\d+)")) == "42"
  assert gen.normalise("  1,000,000. ") == "1000000"
  assert gen.normalise("a, b") == "a, b"   # commas only inside numbers


def test_cut_at_the_first_stop_string():
  assert gen.cut_at_stop("12\n\nQuestion: what", ("Question:", "\n\n")) == "12"
  assert gen.cut_at_stop("12 Question: x\n\n", ("\n\n", "Question:")) == "12 "
  assert gen.cut_at_stop("no stop", ("\n\n",)) == "no stop"


def test_gsm8k_records_are_read_as_they_are(tmp_path):
  path = _write(tmp_path / "gsm8k.jsonl", [
      {"question": "Natalia sold 48 clips in April and half as many in May. How many?",
       "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n"
                 "In all 48+24 = <<48+24=72>>72 clips.\n#### 1,072"},
      {"query": "What is 2 + 3?\nAnswer:", "answer": 5}])
  assert gen.is_generative(path)
  first, second = gen.read_file(path)
  assert first.query.startswith("Question: Natalia") and first.query.endswith("\nAnswer:")
  assert first.answer == "1,072" and gen.normalise(first.answer) == "1072"
  assert "<<" not in first.shot and first.shot.endswith("72 clips. The final answer is 1,072")
  assert second.query == "What is 2 + 3?\nAnswer:" and second.answer == "5"
  assert second.shot == "What is 2 + 3?\nAnswer: 5"
  mc = _write(tmp_path / "mc.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0}])
  assert not gen.is_generative(mc)


@pytest.mark.parametrize("row, problem", [
    ({"question": "q"}, "missing field 'answer'"),
    ({"answer": "3"}, "missing field 'query' \\(or 'question'\\)"),
    ({"question": "  ", "answer": "3"}, "the question is empty"),
    ({"question": "q", "answer": ""}, "the answer is empty"),
    ({"question": "q", "answer": "work\n#### "}, "nothing after '####'"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, row, problem):
  path = _write(tmp_path / "t.jsonl", [{"question": "q", "answer": "1"}, row])
  with pytest.raises(tasks.TaskError, match=f"t.jsonl:2: {problem}"):
    gen.read_file(path)


def test_arith_gen_asks_the_arith_questions():
  name, examples, config = gen.read_task("arith_gen")
  assert name == "arith_gen" and len(examples) == 400 and config.stop == ("\n",)
  assert [e.query for e in examples] == [e.query for e in tasks.arithmetic_task()]
  assert all(e.answer == str(solve(e.query)) for e in examples)
  assert examples == gen.arithmetic_generative_task()   # deterministic


def _examples(n=11):
  # prompts of different lengths (two length buckets), each its own answer
  return [gen.GenerativeExample(f"What is {i} + {'1' * (1 + 9 * (i % 3))}?\nAnswer:", str(i), i,
                                f"What is {i}?\nAnswer: {i}") for i in range(n)]


@pytest.mark.slow
def test_generations_do_not_depend_on_the_batch(tokenizer, model):
  config = gen.GenerationConfig(max_new_tokens=6, stop=("e", "\n"))
  by_batch = [[s["generation"] for s in gen.score_generative(
      model, tokenizer, _examples(), config, shots=1, batch_size=b)["samples"]]
      for b in (1, 3, 8)]
  assert by_batch[0] == by_batch[1] == by_batch[2]
  assert all("e" not in g and "\n" not in g for g in by_batch[0])


@pytest.mark.slow
def test_generations_equal_the_plain_generator(tokenizer, model):
  config = gen.GenerationConfig(max_new_tokens=6, stop=("e",))
  examples = _examples(6)
  scores = gen.score_generative(model, tokenizer, examples, config)
  plain = Generator(model, stop_ids=(tokenizer.eos_id,))
  cut = 0
  for e, sample in zip(examples, scores["samples"]):
    ids = [tokenizer.bos_id] + tokenizer.encode(e.query)
    tokens = plain.generate([ids], max_new_tokens=6)[0].tokens[0]
    text = tokenizer.decode([t for t in tokens if t != tokenizer.eos_id])
    assert sample["generation"] == gen.cut_at_stop(text, config.stop)
    cut += sample["generation"] != text
    assert sample["gold"] == e.answer and sample["extracted"] == gen.extract(
        sample["generation"], config)
  assert cut > 0   # some generation was stopped by the stop string
  assert set(scores) >= {"exact_match", "exact_match_ci", "n"} and scores["n"] == 6
