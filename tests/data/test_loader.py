"""The loader: packing, the mixture and its stages, exact resume, process splits, errors.

Documents are written straight into shards with token ids that say where they come from:
document d of source s holds s * 100_000 + d * 100 + [0, 1, 2, ...], so every token names its
document and every target must be its input + 1.
"""

import json

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from llama3_jax.data.loader import Loader
from llama3_jax.data.prepare import FORMAT
from llama3_jax.optim.schedules import Stage
from llama3_jax.train.config import run_config

VOCAB = 500_000


def make_data(root, lengths: dict[str, list[int]], vocab=VOCAB):
  sources = {}
  for s, (name, doc_lengths) in enumerate(sorted(lengths.items())):
    (root / name).mkdir(parents=True)
    writer = ArrayRecordWriter(str(root / name / "shard-00000.array_record"), "group_size:1")
    for d, n in enumerate(doc_lengths):
      writer.write((s * 100_000 + d * 100 + np.arange(n)).astype("<i4").tobytes())
    writer.close()
    sources[name] = {"documents": len(doc_lengths), "tokens": sum(doc_lengths),
                     "shards": [f"{name}/shard-00000.array_record"]}
  manifest = {"format": FORMAT, "sources": sources,
              "tokenizer": {"path": "none", "vocab_size": vocab, "bos_id": 1, "eos_id": 2}}
  (root / "manifest.json").write_text(json.dumps(manifest))
  return root


def lengths(n, seed, low=2, high=90):
  return np.random.default_rng(seed).integers(low, high, n).tolist()


def batches(loader, schedule):
  """[(stage index, stage)] -> list of batches."""
  return [loader.next_batch(i, stage) for i, stage in schedule]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_packing_keeps_every_token_once_within_its_document(tmp_path):
  doc_lengths = lengths(60, 0) + [2, 2, 3, 17]          # incl. one-target documents
  # No row shuffle: the first epoch's rows come first, so it can be checked on its own.
  loader = Loader(make_data(tmp_path, {"general": doc_lengths}), seed=1, streams=1,
                  vocab_size=VOCAB, shuffle_window=1)
  stage = Stage(None, 4 * 16, 16)
  epoch_tokens = sum(n - 1 for n in doc_lengths)
  rows = []
  while sum((r > 0).sum() for r in rows) < epoch_tokens:
    b = loader.next_batch(0, stage)
    for i in range(4):
      rows.append(b["segment_ids"][i])
      seg, pos, x, y, mask = (b[k][i] for k in ("segment_ids", "positions", "inputs",
                                                "targets", "loss_mask"))
      np.testing.assert_array_equal(mask, seg > 0)
      real = seg > 0
      np.testing.assert_array_equal(y[real], x[real] + 1)    # the next token of the same doc
      for s in np.unique(seg[real]):
        span = seg == s
        assert len(np.unique(x[span] // 100)) == 1            # one document per segment
        np.testing.assert_array_equal(pos[span], np.arange(span.sum()))   # restart at 0
      rows[-1] = x[real]
  seen = np.concatenate(rows)[:epoch_tokens]
  expected = np.concatenate([d * 100 + np.arange(n - 1) for d, n in enumerate(doc_lengths)])
  np.testing.assert_array_equal(np.sort(seen), np.sort(expected))   # each exactly once


def test_mixture_fractions_follow_the_weights(tmp_path):
  weights = {"general": 50, "math": 25, "code": 17, "multilingual": 8}
  data = make_data(tmp_path, {name: lengths(400, i) for i, name in enumerate(weights)})
  loader = Loader(data, seed=0, streams=4, vocab_size=VOCAB)
  stage = Stage(None, 16 * 32, 32, tuple(weights.items()))
  sources = np.concatenate([loader.next_batch(0, stage)["source"] for _ in range(100)])
  tokens = loader.tokens_per_source()
  total = sum(tokens.values())
  for name, weight in weights.items():
    assert abs(tokens[name] / total - weight / 100) < 0.01, (name, tokens)
    share = np.mean(sources == loader.sources.index(name))
    assert abs(share - weight / 100) < 0.01, (name, share)


def test_default_mixture_is_llama3s(tmp_path):
  weights = {"general": 50, "math": 25, "code": 17, "multilingual": 8}
  data = make_data(tmp_path, {name: lengths(50, i) for i, name in enumerate(weights)})
  loader = Loader(data, seed=0, streams=2, vocab_size=VOCAB)
  assert loader.weights(Stage(None, 64, 8)) == {k: float(v) for k, v in weights.items()}


def test_stage_weights_change_at_the_boundary_and_documents_continue(tmp_path):
  data = make_data(tmp_path, {"a": lengths(300, 0), "b": lengths(300, 1), "c": lengths(300, 2)})
  loader = Loader(data, seed=0, streams=2, vocab_size=VOCAB)
  first = Stage(10, 8 * 16, 16, (("a", 1.0), ("b", 1.0)))
  second = Stage(20, 8 * 16, 16, (("c", 1.0),))
  third = Stage(None, 4 * 32, 32, (("a", 1.0),))    # a new row length and batch size too
  ids = lambda name: loader.sources.index(name)
  before = batches(loader, [(0, first)] * 5)
  assert all(ids("c") not in b["source"] for b in before)
  assert {ids("a"), ids("b")} <= set(np.concatenate([b["source"] for b in before]))
  during = batches(loader, [(1, second)] * 3)
  assert all(set(b["source"]) == {ids("c")} for b in during)
  after = batches(loader, [(2, third)] * 3)
  assert all(set(b["source"]) == {ids("a")} for b in after)
  docs = lambda bs: {int(t) for b in bs for t, s in zip(b["inputs"].ravel() // 100,
                                                        b["segment_ids"].ravel()) if s}
  a_docs_before = {d for d in docs(before) if d < 1000}     # source a: ids below 100_000
  # The third stage continues after the documents of source a that the first stage used
  # (only the one split at the boundary may show up again).
  assert len(a_docs_before & docs(after)) <= 2


def test_resume_from_saved_state_is_exact_across_stages(tmp_path):
  data = make_data(tmp_path, {"a": lengths(200, 0), "b": lengths(200, 1)})
  schedule = ([(0, Stage(10, 8 * 16, 16))] * 4 + [(1, Stage(None, 4 * 32, 32, (("b", 1.0),)))] * 3)
  straight = Loader(data, seed=3, streams=4, vocab_size=VOCAB)
  expected = batches(straight, schedule)
  for k in (1, 3, 4, 5):
    first = Loader(data, seed=3, streams=4, vocab_size=VOCAB)
    batches(first, schedule[:k])
    state = json.loads(json.dumps(first.get_state()))       # as the checkpoint stores it
    resumed = Loader(data, seed=3, streams=4, vocab_size=VOCAB)
    resumed.set_state(state, [stage for _, stage in schedule[::4]])
    assert_same(batches(resumed, schedule[k:]), expected[k:])
    assert resumed.tokens_per_source() == straight.tokens_per_source()


@pytest.mark.parametrize("cut", [8, 6])   # on a stream boundary, and inside a stream
def test_processes_reading_their_rows_assemble_the_same_batch(tmp_path, cut):
  data = make_data(tmp_path, {"a": lengths(200, 0), "b": lengths(200, 1)})
  schedule = [(0, Stage(10, 16 * 8, 8))] * 3 + [(1, Stage(None, 16 * 16, 16))] * 2
  whole = Loader(data, seed=0, streams=4, vocab_size=VOCAB)
  low = Loader(data, seed=0, streams=4, vocab_size=VOCAB)
  high = Loader(data, seed=0, streams=4, vocab_size=VOCAB)
  for i, stage in schedule:
    full = whole.next_batch(i, stage)
    parts = low.next_batch(i, stage, (0, cut)), high.next_batch(i, stage, (cut, 16))
    for k in full:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])


def test_seed_decides_the_order(tmp_path):
  data = make_data(tmp_path, {"a": lengths(100, 0)})
  stage = Stage(None, 4 * 16, 16)
  one, same, other = (Loader(data, seed=s, streams=2, vocab_size=VOCAB) for s in (0, 0, 1))
  assert_same(batches(one, [(0, stage)] * 3), batches(same, [(0, stage)] * 3))
  assert not np.array_equal(one.next_batch(0, stage)["inputs"],
                            other.next_batch(0, stage)["inputs"])


def test_clear_errors(tmp_path):
  data = make_data(tmp_path / "d", {"a": lengths(10, 0), "b": lengths(3, 1)}, vocab=1000)
  with pytest.raises(ValueError, match="larger than the model's vocab_size 512"):
    Loader(data, seed=0, streams=2, vocab_size=512)
  with pytest.raises(ValueError, match="source 'b' has 3 documents, fewer than data.streams=4"):
    Loader(data, seed=0, streams=4, vocab_size=1000)
  loader = Loader(data, seed=0, streams=2, vocab_size=1000)
  with pytest.raises(ValueError, match="not divisible by data.streams=2"):
    loader.next_batch(0, Stage(None, 3 * 8, 8))
  with pytest.raises(ValueError, match=r"names sources \['web'\] that the data does not have"):
    loader.next_batch(0, Stage(None, 2 * 8, 8, (("web", 1.0),)))
  with pytest.raises(ValueError, match="must be >= 0 with at least one > 0"):
    loader.next_batch(0, Stage(None, 2 * 8, 8, (("a", 0.0),)))
  # The manifest claims a vocabulary of 1000, but the ids of source b reach 100_000+.
  with pytest.raises(ValueError, match="outside the model's vocabulary of 1000"):
    for _ in range(5):
      loader.next_batch(1, Stage(None, 2 * 8, 8, (("b", 1.0),)))


def test_every_stages_mixture_is_checked_before_the_first_step(tmp_path, caplog):
  """Prepared data with two of the four default sources: a later stage naming a missing source
  fails at start-up (it used to fail when the stage began, after the last checkpoint); stages on
  the default mixture say which sources they lack."""
  data = make_data(tmp_path / "d", {"general": lengths(10, 0), "code": lengths(10, 1)})
  loader = Loader(data, seed=0, streams=2, vocab_size=VOCAB)
  stages = [Stage(64, 2 * 8, 8), Stage(None, 2 * 8, 8, (("general", 1.0), ("math", 1.0)))]
  with pytest.raises(ValueError, match=r"train.stages\[1\]: the stage's mixture names sources "
                                       r"\['math'\] that the data does not have.*prepare_data"):
    loader.check_stages(stages)
  with caplog.at_level("WARNING"):
    loader.check_stages(stages[:1])
  assert "has no math, multilingual: it trains on code, general" in caplog.text


def test_a_run_whose_later_stage_lacks_a_source_stops_before_training(tmp_path):
  from llama3_jax.train.loop import train
  from tests.helpers import tiny_run_config
  data = make_data(tmp_path / "d", {"general": lengths(40, 0), "code": lengths(40, 1)},
                   vocab=512)
  cfg = tiny_run_config(steps=4, stages=((256, 8 * 16, 16), (None, 8 * 16, 16)))
  cfg.train.stages = (cfg.train.stages[0], {**cfg.train.stages[1], "mixture": {"math": 1.0}})
  cfg.data.path = str(data)
  with pytest.raises(ValueError, match=r"train.stages\[1\].*\['math'\]"):
    train(run_config(cfg), tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists() or not any(
      (tmp_path / "run" / "checkpoints").iterdir())
