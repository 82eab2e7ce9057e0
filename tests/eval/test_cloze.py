"""The held-out cloze task: seeded, one true continuation among other documents' ones, cut
where the query and the continuation rejoin into the document's own text."""

import json

import pytest

from llama3_jax.data import corpus
from llama3_jax.data.prepare import prepare
from llama3_jax.eval import cloze, tasks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A small prepared directory: 30 documents of each of two corpus sources."""
  root = corpus.embedded_corpus()
  out = tmp_path_factory.mktemp("cloze")
  texts = {}
  for source in ("general", "math"):
    lines = (root / "raw" / f"{source}.jsonl").read_text().splitlines()[:30]
    (out / f"{source}.jsonl").write_text("\n".join(lines) + "\n")
    texts[source] = [json.loads(line)["text"] for line in lines]
    prepare(out / f"{source}.jsonl", root / "tokenizer.model", out / "prepared", source=source)
  return out / "prepared", texts


def test_cloze_is_seeded_and_has_one_true_continuation(data_dir):
  path, texts = data_dir
  examples = cloze.cloze_task(path)
  assert examples == cloze.cloze_task(path) and examples != cloze.cloze_task(path, seed=1)
  documents = [t for source in sorted(texts) for t in texts[source]]
  assert 40 <= len(examples) <= 60
  continuations = set()
  for e in examples:
    assert len(e.choices) == cloze.CHOICES == len(set(e.choices)) and 0 <= e.gold < 4
    whole = e.query + " " + e.choices[e.gold]
    assert sum(d.startswith(whole) for d in documents) >= 1   # the document's own text
    continuations.add(e.choices[e.gold])
  # distractors are other documents' true continuations, never the example's own
  assert all(set(e.choices) <= continuations for e in examples)
  assert 0.15 < sum(e.gold == 0 for e in examples) / len(examples) < 0.4   # shuffled


@pytest.mark.slow
def test_shipped_cloze_reads_the_heldout_split():
  name, examples = tasks.read_task("cloze")
  assert name == "cloze" and len(examples) > 500
  assert all(len(set(e.choices)) == 4 and 0 <= e.gold < 4 for e in examples)
  assert [e.index for e in examples] == list(range(len(examples)))
