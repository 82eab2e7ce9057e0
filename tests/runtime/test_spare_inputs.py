"""No launcher destroys its input or a run, and no value that would is accepted: the checks of
llama3_jax/errors.py (outputs apart from inputs), prepare_data's one tokenizer per directory,
the checkpoint settings that keep nothing, and "checkpoint saved" only when one was. The same
cases through the real command lines are rows of tests/runtime/test_bad_inputs.py.
"""

import json
import os
import pathlib

import numpy as np
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource

from llama3_jax import cli
from llama3_jax.data.prepare import prepare
from llama3_jax.data.tokenizers import load_tokenizer, train_sentencepiece
from llama3_jax.errors import UserError, at_least, check_apart, check_new, with_run
from llama3_jax.train.config import run_config
from tests.runtime import tiny_config

DOCS = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(5 + 3 * i))
        for i in range(12)]


# ---- outputs apart from inputs -------------------------------------------------------------

def test_an_output_never_is_holds_or_lies_inside_an_input(tmp_path):
  run = tmp_path / "run"
  (run / "checkpoints" / "2").mkdir(parents=True)
  (run / "logs").mkdir()
  (run / "logs" / "p0.log").write_text("log")
  (tmp_path / "link").symlink_to(run)
  inputs = [("--checkpoint", run)]
  for out, said in [(run, "is the input --checkpoint"),
                    (tmp_path / "link", "is the input --checkpoint"),
                    (tmp_path, "holds the input --checkpoint"),
                    (run / "checkpoints", "lies inside the input --checkpoint"),
                    (run / "new", "lies inside the input --checkpoint")]:
    with pytest.raises(UserError, match=said):
      check_apart(out, inputs)
  check_apart(tmp_path / "elsewhere", inputs)
  check_apart(tmp_path / "runs", [("--input", tmp_path / "run")])   # a name's prefix is apart
  check_apart(tmp_path / "x", [("--prompts", None), ("--hf", "")])  # unset inputs are skipped


def test_an_output_may_replace_only_its_own_kind_directly_in_a_run(tmp_path):
  run = tmp_path / "run"
  (run / "checkpoints" / "2").mkdir(parents=True)
  (run / "logs").mkdir()
  (run / "logs" / "p0.log").write_text("log")
  (run / "hf").mkdir()
  (run / "hf" / "config.json").write_text("{}")
  export = lambda path: (path / "config.json").is_file()   # noqa: E731
  check_apart(run / "hf", [("--checkpoint", run)], replaceable=export)       # an earlier export
  check_apart(run / "hf2", [("--checkpoint", run)], replaceable=export)      # a new name
  with pytest.raises(UserError, match="lies inside"):
    check_apart(run / "logs", [("--checkpoint", run)], replaceable=export)   # the run's logs
  with pytest.raises(UserError, match="lies inside"):   # a new "step" would be resumed from
    check_apart(run / "checkpoints" / "9", [("--checkpoint", run)], replaceable=export)
  step = run / "checkpoints" / "2"
  assert with_run("--checkpoint", step) == [("--checkpoint", step), ("--checkpoint's run", run)]
  with pytest.raises(UserError, match="is the input --checkpoint's run"):
    check_apart(run, [("--checkpoint's run", run)])
  with pytest.raises(UserError, match="lies inside the input --checkpoint's run"):
    check_apart(run / "metrics.jsonl", with_run("--checkpoint", step))


def test_existing_outputs_need_overwrite_and_counts_are_not_replaced(tmp_path):
  (tmp_path / "f.jsonl").write_text("x")
  with pytest.raises(UserError, match=r"--out .*f.jsonl exists: pass --overwrite"):
    check_new(tmp_path / "f.jsonl", "--out")
  check_new(tmp_path / "f.jsonl", "--out", overwrite=True)
  check_new(tmp_path / "new.jsonl", "--out")
  with pytest.raises(UserError, match="--top=-2 must be >= 1"):
    at_least(-2, 1, "--top")
  at_least(None, 1, "--top")


# ---- prepare_data: one tokenizer per directory, never a shard another one wrote ---------------

@pytest.fixture(scope="module")
def two_tokenizers(tmp_path_factory):
  base = tmp_path_factory.mktemp("tok")
  return (train_sentencepiece(DOCS * 5, 320, base / "a.model"),
          train_sentencepiece(DOCS * 5 + ["xyz " * 50], 330, base / "b.model"))


def _raw(tmp_path) -> pathlib.Path:
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
  return raw


def _files(path: pathlib.Path) -> dict:
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
          if p.is_file()}


def test_another_tokenizer_is_refused_before_anything_is_tokenized(two_tokenizers, tmp_path):
  first, other = two_tokenizers
  raw, out = _raw(tmp_path), tmp_path / "data"
  prepare(raw, first.path, out, source="general")
  before = _files(out)
  with pytest.raises(UserError, match="is a different tokenizer: use another --out directory"):
    prepare(raw, other.path, out, source="web")
  assert _files(out) == before   # no orphan shard, no stage files
  manifest = prepare(raw, first.path, out, source="web")   # the right tokenizer: fine
  assert manifest["sources"]["web"]["documents"] == len(DOCS)


def test_a_shard_not_recorded_with_this_tokenizer_is_tokenized_again(two_tokenizers, tmp_path):
  """A shard left by another tokenizer (an older version wrote them before refusing) is never
  adopted: the manifest's vocabulary is the shards' own."""
  first, other = two_tokenizers
  raw = _raw(tmp_path)
  prepare(raw, other.path, tmp_path / "by_other", source="general")
  out = tmp_path / "data"
  (out / "general").mkdir(parents=True)
  for name in ("shard-00000.array_record", "shard-00000.json"):   # an orphan, as main left it
    os.link(tmp_path / "by_other" / "general" / name, out / "general" / name)
  summary = out / "general" / "shard-00000.json"
  fields = json.loads(summary.read_text())
  del fields["tokenizer_sha256"]
  summary.unlink()
  summary.write_text(json.dumps(fields))
  manifest = prepare(raw, first.path, out, source="general")
  data = ArrayRecordDataSource([str(out / manifest["sources"]["general"]["shards"][0])])
  tokens = [np.frombuffer(data[i], "<i4").tolist() for i in range(len(data))]
  assert tokens == [load_tokenizer(first.path).encode(t, bos=True, eos=True) for t in DOCS]


# ---- checkpoints: settings that keep nothing are refused; "saved" only when it was ------------

@pytest.mark.parametrize("field,value,said", [
    ("checkpoint.max_to_keep", 0, "checkpoint.max_to_keep=0 keeps no checkpoint"),
    ("checkpoint.max_to_keep", -1, "checkpoint.max_to_keep=-1 keeps no checkpoint"),
    ("checkpoint.every_steps", 0, "checkpoint.every_steps=0 must be >= 1"),
    ("checkpoint.keep_period", 0, "checkpoint.keep_period=0 must be >= 1"),
    ("log.every_steps", 0, "log.every_steps=0 must be >= 1"),
])
def test_checkpoint_and_log_settings_that_keep_nothing_are_refused(field, value, said):
  cfg = tiny_config.get_config()
  section, name = field.split(".")
  cfg[section][name] = value
  with pytest.raises(UserError, match=said):
    run_config(cfg)


def test_checkpoint_saved_is_said_only_when_it_was(tmp_path):
  stopped = {"steps": 4, "stopped_by": "SIGTERM"}
  assert cli.stopped_note({"steps": 4}, tmp_path) == ""
  assert cli.stopped_note(stopped, tmp_path) == (
      " (stopped by SIGTERM, but no checkpoint was saved)")
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  assert cli.stopped_note(stopped, tmp_path) == " (stopped by SIGTERM, checkpoint saved)"
