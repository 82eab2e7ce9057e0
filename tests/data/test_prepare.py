"""Preparing raw text into ArrayRecord shards: formats, round trip, bad input, resume."""

import gzip
import json
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource

from llama3_jax.data.prepare import prepare, read_manifest
from llama3_jax.data.sources import Skips, read_documents
from llama3_jax.data.tokenizers import train_sentencepiece

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(5 + 3 * i))
        for i in range(12)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_sentencepiece(DOCS * 5, 320, tmp_path_factory.mktemp("tok") / "t.model")


@pytest.fixture
def raw(tmp_path):
  """The same 12 documents spread over JSONL, gzipped JSONL, text and Parquet files."""
  d = tmp_path / "raw"
  d.mkdir()
  (d / "a.jsonl").write_text("".join(json.dumps({"text": t, "url": "u"}) + "\n"
                                     for t in DOCS[:4]))
  with gzip.open(d / "b.jsonl.gz", "wt") as f:
    f.write("".join(json.dumps({"text": t}) + "\n" for t in DOCS[4:7]))
  (d / "c.txt").write_text(DOCS[7])
  pq.write_table(pa.table({"text": DOCS[8:], "id": list(range(4))}), d / "d.parquet")
  return d


def shard_tokens(out, manifest, source="general"):
  docs = []
  for shard in manifest["sources"][source]["shards"]:
    data = ArrayRecordDataSource([str(out / shard)])
    docs += [np.frombuffer(data[i], "<i4").tolist() for i in range(len(data))]
  return docs


def test_shards_reproduce_the_token_stream(tokenizer, raw, tmp_path):
  out = tmp_path / "out"
  manifest = prepare(raw, tokenizer.path, out, source="general", provenance="test docs")
  expected = [tokenizer.encode(t, bos=True, eos=True) for t in DOCS]
  assert shard_tokens(out, manifest) == expected
  info = read_manifest(out)["sources"]["general"]
  assert info["documents"] == 12 and info["tokens"] == sum(map(len, expected))
  assert info["provenance"] == "test docs" and info["skipped"]["counts"] == {}
  assert read_manifest(out)["tokenizer"]["vocab_size"] == tokenizer.vocab_size <= 320


def test_parallel_and_resumed_preparation_give_the_same_shards(tokenizer, raw, tmp_path):
  serial = prepare(raw, tokenizer.path, tmp_path / "serial")
  parallel = prepare(raw, tokenizer.path, tmp_path / "parallel", workers=2)
  assert shard_tokens(tmp_path / "serial", serial) == shard_tokens(tmp_path / "parallel",
                                                                   parallel)
  # Split over two "machines": the first writes half the shards and no manifest yet.
  assert prepare(raw, tokenizer.path, tmp_path / "split", shard_index=0, shard_count=2) == {}
  shard = tmp_path / "split" / "general" / "shard-00000.array_record"
  written = shard.stat().st_mtime_ns
  split = prepare(raw, tokenizer.path, tmp_path / "split", shard_index=1, shard_count=2)
  assert shard_tokens(tmp_path / "split", split) == shard_tokens(tmp_path / "serial", serial)
  prepare(raw, tokenizer.path, tmp_path / "split")          # a rerun redoes nothing
  assert shard.stat().st_mtime_ns == written


def test_several_sources_share_one_directory_and_tokenizer(tokenizer, raw, tmp_path):
  prepare(raw / "a.jsonl", tokenizer.path, tmp_path, source="general")
  manifest = prepare(raw / "c.txt", tokenizer.path, tmp_path, source="code")
  assert sorted(manifest["sources"]) == ["code", "general"]
  other = train_sentencepiece(DOCS * 5 + ["xyz " * 50], 330, tmp_path / "other.model")
  with pytest.raises(ValueError, match="different tokenizer: use another --out"):
    prepare(raw / "c.txt", other.path, tmp_path, source="math")
  with pytest.raises(ValueError, match="must be an identifier"):
    prepare(raw / "c.txt", tokenizer.path, tmp_path, source="my source")


def test_malformed_records_are_counted_or_fatal(tokenizer, tmp_path):
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "mixed.jsonl").write_bytes(
      b'{"text": "good one"}\n{"text": "broken\n{"title": "no text"}\n{"text": 7}\n'
      b'{"text": "bad \xff\xfe bytes"}\n\n{"text": "good two"}\n')
  (bad / "empty.jsonl").write_bytes(b"")
  skips = Skips()
  assert list(read_documents(bad / "mixed.jsonl", skips)) == ["good one", "good two"]
  assert sum(skips.counts.values()) == 4
  assert any("mixed.jsonl:2" in e for e in skips.examples)
  manifest = prepare(bad, tokenizer.path, tmp_path / "out")
  counts = manifest["sources"]["general"]["skipped"]["counts"]
  assert manifest["sources"]["general"]["documents"] == 2
  assert counts["invalid UTF-8"] == 1 and counts["empty files"] == 1
  assert counts["no string field 'text'"] == 2
  with pytest.raises(ValueError, match=r"mixed.jsonl:2: broken JSON.*fix or remove the line"):
    prepare(bad, tokenizer.path, tmp_path / "strict", strict=True)


def test_inputs_without_documents_are_an_error(tokenizer, tmp_path):
  (tmp_path / "empty.jsonl").write_text("")
  with pytest.raises(ValueError, match="no documents were read"):
    prepare(tmp_path / "empty.jsonl", tokenizer.path, tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    prepare(tmp_path / "missing", tokenizer.path, tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="not a prepared data directory"):
    read_manifest(tmp_path)


def test_command_lines(tokenizer, raw, tmp_path):
  run = lambda *args: subprocess.run([sys.executable, "-m", *args], capture_output=True,
                                     text=True, cwd=ROOT)
  trained = run("experiments.train_tokenizer", "--input", str(raw), "--vocab-size", "300",
                "--out", str(tmp_path / "cli.model"))
  assert trained.returncode == 0, trained.stderr
  prepared = run("experiments.prepare_data", "--input", str(raw), "--tokenizer",
                 str(tmp_path / "cli.model"), "--out", str(tmp_path / "cli"), "--source", "math")
  assert prepared.returncode == 0, prepared.stderr
  assert "math: 12 documents" in prepared.stdout
  missing = run("experiments.prepare_data", "--input", str(tmp_path / "nope"), "--tokenizer",
                str(tmp_path / "cli.model"), "--out", str(tmp_path / "x"))
  assert missing.returncode == 2 and missing.stderr.startswith("error: input")
  assert "Traceback" not in missing.stderr


def test_slurm_job_arrays_and_changed_inputs(tokenizer, raw, tmp_path):
  """The SLURM executor's files name the world sizes the tasks then run with, giving the local
  run's shards; an input changed after its shard was written is tokenized again."""
  from llama3_jax.data.curation.tasks import run_task
  local = prepare(raw, tokenizer.path, tmp_path / "local", workers=2)
  out = tmp_path / "slurm"
  assert prepare(raw, tokenizer.path, out, executor="slurm", tasks=2) == {}
  work = out / "_work" / "prepare-general"
  assert "#SBATCH --array=0-1" in (work / "slurm/00-tokenize.sbatch").read_text()
  assert "--world 1" in (work / "slurm/01-manifest.sbatch").read_text()
  assert "afterok" in (work / "slurm/submit.sh").read_text()
  for stage, world in (("tokenize", 2), ("manifest", 1)):   # what the array tasks run
    for rank in range(world):
      run_task(work, stage, rank, world)
  assert shard_tokens(out, read_manifest(out)) == shard_tokens(tmp_path / "local", local)
  stats = json.loads((work / "stats" / "tokenize.json").read_text())
  assert stats["units"] == 4 and stats["tokens"] == local["sources"]["general"]["tokens"]
  (raw / "c.txt").write_text(DOCS[0] + " and more words")     # shard 2's input changes
  logs = []
  manifest = prepare(raw, tokenizer.path, out, log=logs.append)
  assert any("c.txt changed since its shard was written" in line for line in logs)
  assert shard_tokens(out, manifest)[7] == tokenizer.encode(DOCS[0] + " and more words",
                                                            bos=True, eos=True)
