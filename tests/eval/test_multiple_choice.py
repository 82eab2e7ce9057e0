"""Multiple choice: the harness's definitions, log-likelihoods equal transformers', scores that
do not depend on the batch, seeded shots, intervals, and the readers of benchmark files."""

import json

import numpy as np
import pytest
from flax import nnx

from llama3_jax.eval import multiple_choice as mc
from llama3_jax.eval import tasks
from llama3_jax.model import Transformer
from tests.helpers import TINY, solve_arithmetic as solve





@pytest.fixture(scope="module")
def model():
  return Transformer(TINY, rngs=nnx.Rngs(3))


def test_encode_pair_moves_the_trailing_space_into_the_continuation(tokenizer):
  ctx, cont = mc.encode_pair(tokenizer, "Question: 2 + 2?\nAnswer: ", "4")
  ctx2, cont2 = mc.encode_pair(tokenizer, "Question: 2 + 2?\nAnswer:", " 4")
  assert ctx == ctx2 and cont == cont2 and ctx[0] == tokenizer.bos_id
  whole = tokenizer.encode("Question: 2 + 2?\nAnswer: 4")
  assert ctx[1:] + cont == whole[:len(ctx) - 1] + whole[len(ctx) - 1:]


def test_loglikelihoods_equal_transformers(tokenizer, model, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from llama3_jax.checkpoint import hf
  examples = tasks.arithmetic_task(6)
  ours = mc.loglikelihoods(model, tokenizer, examples, shots=2)
  hf.save(model, TINY, tmp_path / "hf")
  reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf",
                                                            torch_dtype=torch.float32)
  for example, lls in zip(examples, ours):
    context = mc.few_shot_context(example, examples, 2, 1234)
    for choice, ll in zip(example.choices, lls):
      ctx, cont = mc.encode_pair(tokenizer, context, " " + choice)
      ids = torch.tensor([ctx + cont])
      with torch.no_grad():
        logp = torch.log_softmax(reference(ids).logits[0].double(), -1)
      expected = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
      np.testing.assert_allclose(ll, expected, rtol=1e-4, atol=1e-4)


def test_scores_do_not_depend_on_the_batch(tokenizer, model):
  examples = tasks.arithmetic_task(11)
  full = mc.loglikelihoods(model, tokenizer, examples, batch_size=8)
  one = mc.loglikelihoods(model, tokenizer, examples, batch_size=1)
  assert one == full   # bit for bit
  # Alone, or among other examples: the same numbers.
  alone = mc.loglikelihoods(model, tokenizer, examples[3:4], pool=examples)
  assert alone[0] == full[3]


def test_shots_are_seeded_and_exclude_the_example():
  examples = tasks.arithmetic_task(20)
  a = mc.few_shot_context(examples[5], examples, 3, seed=1)
  assert a == mc.few_shot_context(examples[5], examples, 3, seed=1)
  assert a != mc.few_shot_context(examples[5], examples, 3, seed=2)
  parts = a.split("\n\n")
  assert len(parts) == 4 and parts[-1] == examples[5].query
  assert examples[5].shot not in parts[:-1]
  with pytest.raises(ValueError, match="use fewer --shots"):
    mc.few_shot_context(examples[0], examples[:3], 3, seed=1)


def test_interval_and_metrics():
  assert mc.interval(0.5, 100) == pytest.approx(1.96 * 0.05)
  examples = [tasks.Example("q", ("a", "bbbb"), 1, 0, "x"),
              tasks.Example("q", ("a", "bb"), 0, 1, "y"),
              tasks.Example("q", ("a", "bb"), 0, 2, "y")]
  lls = [[-1.0, -2.0], [-1.0, -4.0], [-1.0, -0.5]]
  m = mc.metrics(examples, lls)
  # acc: wrong, right, wrong -> subjects x: 0, y: 0.5 -> macro 0.25
  assert m["acc"] == pytest.approx(0.25) and m["subjects"] == 2
  # acc_norm: -2/4 > -1/1 picks gold for the first; -4/2 < -1 (gold); -0.5/2 > -1 (wrong)
  # -> x 1, y 0.5 -> macro 0.75
  assert m["acc_norm"] == pytest.approx(0.75)
  assert m["gold_nll_per_char"] == pytest.approx(np.mean([0.5, np.mean([1.0, 1.0])]))


def _write(path, rows):
  if path.suffix == ".parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
  elif path.suffix == ".json":
    path.write_text(json.dumps(rows))
  else:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_readers_give_the_prompts_and_gold(tmp_path, suffix):
  arc = _write(tmp_path / f"arc{suffix}", [{"question": "Which is a gas?", "choices": {
      "text": ["rock", "steam", "ice"], "label": ["A", "B", "C"]}, "answerKey": "B"}])
  (e,) = tasks.read_file(arc)
  assert (e.query, e.choices, e.gold) == ("Question: Which is a gas?\nAnswer:",
                                          ("rock", "steam", "ice"), 1)
  mmlu = _write(tmp_path / f"mmlu{suffix}", [{"question": "2 + 2 =", "choices": ["3", "4", "5",
                                              "6"], "answer": 1, "subject": "elementary_math"}])
  (e,) = tasks.read_file(mmlu)
  assert e.query == ("The following are multiple choice questions (with answers) about "
                     "elementary math.\n\n2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
  assert e.choices == ("A", "B", "C", "D") and e.gold == 1 and e.subject == "elementary_math"
  hella = _write(tmp_path / f"hs{suffix}", [{"ctx": "He opens the door", "endings": [
      "and walks in.", "and the sky.", "purple.", "of seven."], "label": "0"}])
  (e,) = tasks.read_file(hella)
  assert e.query == "He opens the door" and e.gold == 0 and len(e.choices) == 4


@pytest.mark.parametrize("row, problem", [
    ({"query": "q", "choices": ["a", "b"]}, "missing field 'gold'"),
    ({"query": "q", "choices": ["a", "b"], "gold": 2}, "gold=2 is not an index"),
    ({"query": "q", "choices": [], "gold": 0}, "'choices' must be a non-empty list"),
])
def test_bad_task_lines_name_the_file_and_line(tmp_path, row, problem):
  path = _write(tmp_path / "t.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0}, row])
  with pytest.raises(tasks.TaskError, match=f"t.jsonl:2: {problem}"):
    tasks.read_file(path)


def test_arithmetic_task_hides_the_answer_among_other_questions_answers():
  examples = tasks.arithmetic_task(100, seed=3)
  assert examples == tasks.arithmetic_task(100, seed=3)   # seeded
  answers = set()
  for e in examples:
    value = solve(e.query)
    assert len(set(e.choices)) == 4 and e.choices[e.gold] == str(value)
    answers.add(str(value))
  assert all(set(e.choices) <= answers for e in examples)   # other questions' answers
  # drawn as golds are drawn: the gold is not the shortest or the longest more than by chance
  lengths = [[len(c) for c in e.choices] for e in examples]
  for pick in (min, max):
    unique = [ls.count(pick(ls)) == 1 and ls.index(pick(ls)) == e.gold
              for ls, e in zip(lengths, examples)]
    assert np.mean(unique) < 0.35
  assert 0.15 < np.mean([e.gold == 0 for e in examples]) < 0.35   # answers shuffled
  # the math source's six forms, each cut where the source writes its answer
  assert {e.query.split()[0] for e in examples} >= {"What", "Compute", "Divide"}
  assert all(e.query.endswith(("\nAnswer:", "=")) for e in examples)
  assert 0.5 < np.mean([e.query.endswith("=") for e in examples]) < 0.85   # 4 forms in 6
