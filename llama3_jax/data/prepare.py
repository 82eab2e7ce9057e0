"""Pre-tokenizes raw text into ArrayRecord shards that training reads.

    python -m experiments.prepare_data --input raw/*.jsonl --tokenizer tok.model \
        --source general --out data/

Layout of `out/`: `manifest.json` (tokenizer and its sha256, and per source: documents,
tokens, shards, provenance) and `<source>/shard-00000.array_record` (one record per document:
its token ids as little-endian int32, BOS and EOS included). Run it once per source into the
same `out/`.

Tokenization is two stages of tasks (llama3_jax/data/curation/tasks.py), run by the same
executors as curation (`executor`: local process pool, ray, slurm job arrays; `tasks` per
stage): `tokenize`, one unit per input file, writes its shard under a temporary name, renames
it, then its small `.json` summary (the unit's completion marker, with the input's size and
modification time and the tokenizer's sha256: a shard another tokenizer wrote is tokenized again,
never adopted); `manifest`, one unit, writes the manifest from the summaries (and the
tokenize stage's totals, documents, tokens, seconds, peak memory, to `_work/.../stats/`). An
interrupted run resumes where it stopped; an `out/` whose manifest names another tokenizer is
refused before anything is tokenized; an input that changed since its shard was written is
tokenized again; several machines can split the files (`shard_index`/`shard_count`: the last
to finish writes the manifest). The stages' spec lies in `out/_work/prepare-<source>/`.
"""

import hashlib
import json
import os
import pathlib

import numpy as np

from llama3_jax.data.curation import executors
from llama3_jax.data.curation.tasks import (Stage, fingerprint, save_json, stage_stats,
                                            write_spec)
from llama3_jax.errors import UserError
from llama3_jax.data.sources import Skips, list_files, read_documents
from llama3_jax.data.tokenizers import load_tokenizer

FORMAT = "llama3_jax.tokens.v1"
MANIFEST = "manifest.json"


def _sha256(path) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _write_json(path: pathlib.Path, value) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
  os.replace(tmp, path)


def _tokenize_file(input_path, shard_path, tokenizer_path, strict, text_field,
                   min_tokens, tokenizer_sha256) -> dict:
  """Writes one shard from one input file; returns its summary (the caller writes it)."""
  from array_record.python.array_record_module import ArrayRecordWriter
  if fingerprint(input_path[0]) != input_path[1]:
    raise UserError(f"{input_path[0]} changed since this tokenization began",
                    "relaunch: its shard is written again")
  recorded, input_path = input_path[1], pathlib.Path(input_path[0])
  tokenizer = _tokenizer_cache(tokenizer_path)
  skips = Skips(strict=strict)
  documents = tokens = short = 0
  tmp = shard_path.with_name(shard_path.name + ".tmp")
  # group_size 1: every document is its own chunk, so random access reads one document.
  writer = ArrayRecordWriter(str(tmp), "group_size:1")
  try:
    for text in read_documents(input_path, skips, text_field=text_field):
      ids = np.asarray(tokenizer.encode(text, bos=True, eos=True), dtype="<i4")
      if ids.size < min_tokens:
        short += 1
        continue
      writer.write(ids.tobytes())
      documents += 1
      tokens += int(ids.size)
  except BaseException:
    writer.close()
    tmp.unlink(missing_ok=True)   # no half-written shard is left behind to be mistaken
    raise
  writer.close()
  os.replace(tmp, shard_path)
  return {"input": str(input_path), "shard": shard_path.name, "documents": documents,
          "docs": documents, "tokens": tokens, "too_short": short, "skipped": skips.as_dict(),
          "fingerprint": recorded, "tokenizer_sha256": tokenizer_sha256}


_TOKENIZERS = {}


def _tokenizer_cache(path):
  if path not in _TOKENIZERS:
    _TOKENIZERS[path] = load_tokenizer(path)
  return _TOKENIZERS[path]


def prepare(inputs, tokenizer_path, out_dir, *, source: str = "general", workers: int = 1,
            strict: bool = False, text_field: str = "text", min_tokens: int = 3,
            shard_index: int = 0, shard_count: int = 1, provenance: str = "",
            executor: str = "local", tasks: int = 0, relaunch: str = "", log=None) -> dict:
  """Tokenizes `inputs` (files, dirs or globs) into `out_dir/source/`; returns the manifest
  ({} while other machines, or the SLURM jobs, still have shards to write)."""
  if not source.isidentifier():
    raise UserError(f"--source {source!r} must be an identifier", "use letters, digits and _")
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise UserError(f"--shard-index {shard_index} with --shard-count {shard_count} selects no "
                    "files", "give a count >= 1 and an index in 0 .. count - 1 (one per machine)")
  if workers < 1:
    raise UserError(f"--workers {workers}", "give at least 1 tokenizing process")
  out_dir = pathlib.Path(out_dir)
  files = list_files(inputs)
  tokenizer_path = str(pathlib.Path(tokenizer_path).resolve())
  load_tokenizer(tokenizer_path)               # a bad tokenizer fails here, not in every task
  tokenizer_sha256 = _sha256(tokenizer_path)
  _check_same_tokenizer(out_dir, tokenizer_path, tokenizer_sha256)   # before any shard
  (out_dir / source).mkdir(parents=True, exist_ok=True)
  work = (out_dir / "_work" / f"prepare-{source}").resolve()   # tasks may run elsewhere
  args = {"inputs": [[str(p.resolve()), fingerprint(p)] for p in files],
          "tokenizer_path": tokenizer_path,
          "out_dir": str(out_dir.resolve()), "source": source, "strict": strict,
          "text_field": text_field, "min_tokens": min_tokens, "provenance": provenance,
          "relaunch": relaunch, "tokenizer_sha256": tokenizer_sha256}
  stages = build_stages(work, **args)
  for i, (path, recorded) in enumerate(args["inputs"]):
    summary = stages[0].marker(i)
    if not summary.exists():
      continue
    written = json.loads(summary.read_text())
    if written.get("fingerprint", recorded) != recorded:
      (log or print)(f"{path} changed since its shard was written: tokenizing it again")
      summary.unlink()
    elif written.get("tokenizer_sha256") != tokenizer_sha256:   # never adopt another's shard
      (log or print)(f"{summary.with_suffix('.array_record')} was not recorded as tokenized "
                     f"with {tokenizer_path}: tokenizing {path} again")
      summary.unlink()
  stages[1].marker(0).unlink(missing_ok=True)   # the manifest is always written again
  write_spec(work, "llama3_jax.data.prepare:build_stages", args)
  tasks = tasks or workers
  if executor == "slurm":
    executors.run_pipeline(work, "slurm", tasks, log=log or print)
    return {}
  executors.run_pipeline(work, executor, tasks * shard_count, workers, log,
                         stages=["tokenize"], part=(shard_index, shard_count))
  if any(not stages[0].marker(i).exists() for i in range(len(files))):
    return {}   # other machines are still writing their shards; the last one finishes
  executors.run_pipeline(work, "local", 1, log=log, stages=["manifest"])
  return json.loads((out_dir / MANIFEST).read_text())


def build_stages(work, *, inputs, tokenizer_path, out_dir, source, strict, text_field,
                 min_tokens, provenance, relaunch="", tokenizer_sha256=None) -> list[Stage]:
  """The tokenize and manifest stages of one source (rebuilt by every task from spec.json)."""
  out_dir = pathlib.Path(out_dir)
  shard = lambda i: out_dir / source / f"shard-{i:05d}.array_record"   # noqa: E731
  tokenize = Stage(
      "tokenize", lambda: len(inputs),
      lambda i: _tokenize_file(inputs[i], shard(i), tokenizer_path, strict, text_field,
                               min_tokens, tokenizer_sha256),
      describe=lambda i: inputs[i][0], max_tasks=len(inputs),
      marker=lambda i: shard(i).with_suffix(".json"))

  def manifest(_):
    m = _update_manifest(out_dir, source, inputs, load_tokenizer(tokenizer_path),
                         tokenizer_path, provenance)
    save_json(pathlib.Path(work) / "stats" / "tokenize.json", stage_stats(work, tokenize))
    return {"docs": m["sources"][source]["documents"], "tokens": m["sources"][source]["tokens"]}
  return [tokenize, Stage("manifest", lambda: 1, manifest, max_tasks=1,
                          marker=lambda _: pathlib.Path(work) / "manifest" / "done.json")]


def _update_manifest(out_dir, source, files, tokenizer, tokenizer_path, provenance) -> dict:
  summaries = []
  for i in range(len(files)):
    summary_path = out_dir / source / f"shard-{i:05d}.json"
    if not summary_path.exists():
      return {}   # other machines are still writing their shards; the last one finishes
    summaries.append(json.loads(summary_path.read_text()))
  manifest_path = out_dir / MANIFEST
  manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
      "format": FORMAT, "sources": {}}
  tokenizer_info = {"path": tokenizer_path, "sha256": _sha256(tokenizer_path),
                    "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
                    "eos_id": tokenizer.eos_id}
  _check_same_tokenizer(out_dir, tokenizer_path, tokenizer_info["sha256"])
  for s in summaries:   # a shard from another tokenizer (or an older version) never joins
    if s.get("tokenizer_sha256") != tokenizer_info["sha256"]:
      raise UserError(f"{out_dir / source / s['shard']} was not tokenized with "
                      f"{tokenizer_path}", "run prepare_data again: it rewrites that shard")
  skipped = Skips()
  for s in summaries:
    skipped.counts.update(s["skipped"]["counts"])
    skipped.examples.extend(s["skipped"]["examples"][:5 - len(skipped.examples)])
  documents = sum(s["documents"] for s in summaries)
  if documents == 0:
    raise ValueError(f"no documents were read from {len(files)} input files for source "
                     f"{source!r} (skipped: {skipped.as_dict()}); check the files and the "
                     "text field name")
  manifest["tokenizer"] = tokenizer_info
  manifest["sources"][source] = {
      "documents": documents, "tokens": sum(s["tokens"] for s in summaries),
      "too_short": sum(s["too_short"] for s in summaries), "skipped": skipped.as_dict(),
      "shards": [f"{source}/{s['shard']}" for s in summaries],
      "inputs": [s["input"] for s in summaries], "provenance": provenance}
  _write_json(manifest_path, manifest)
  return manifest


def _check_same_tokenizer(out_dir, tokenizer_path, sha256: str) -> None:
  """One tokenizer per data directory: the sources of `out_dir` were tokenized with
  `tokenizer_path`, or it has none yet."""
  path = pathlib.Path(out_dir) / MANIFEST
  try:
    previous = json.loads(path.read_text()).get("tokenizer") if path.exists() else None
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
    raise UserError(f"{path} is not a valid manifest",
                    "use another --out directory, or delete this one") from None
  if isinstance(previous, dict) and previous.get("sha256") != sha256:
    raise UserError(f"{out_dir} already holds sources tokenized with {previous.get('path')}; "
                    f"{tokenizer_path} is a different tokenizer",
                    f"use another --out directory, or --tokenizer {previous.get('path')}")


def read_manifest(data_dir) -> dict:
  """The manifest of a prepared data directory, its fields checked: a truncated or hand-edited
  manifest is a UserError naming the file and the field, not a KeyError later."""
  path = pathlib.Path(data_dir) / MANIFEST
  again = "prepare the data again (python -m experiments.prepare_data)"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: {data_dir} is not a prepared data "
                            "directory; make one with python -m experiments.prepare_data")
  try:
    manifest = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise UserError(f"{path} is not valid JSON ({error}); it is truncated or corrupt",
                    again) from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise UserError(f"{path} has format {found!r}, expected {FORMAT!r}", again)
  problems = _manifest_problems(manifest)
  if problems:
    raise UserError(f"{path} is not a valid manifest: {'; '.join(problems)}", again)
  return manifest


def _manifest_problems(manifest: dict) -> list[str]:
  tokenizer, sources = manifest.get("tokenizer"), manifest.get("sources")
  problems = []
  if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("vocab_size"), int) or \
      not isinstance(tokenizer.get("path"), str):
    problems.append("'tokenizer' needs a 'path' and an integer 'vocab_size'")
  if not isinstance(sources, dict) or not sources:
    return problems + ["'sources' must name at least one source"]
  for name, source in sources.items():
    shards = source.get("shards") if isinstance(source, dict) else None
    if not isinstance(shards, list) or not shards or not all(isinstance(s, str) for s in shards):
      problems.append(f"sources.{name}.shards must be a list of shard paths")
    if not isinstance(source, dict) or not isinstance(source.get("documents"), int):
      problems.append(f"sources.{name}.documents must be an integer")
  return problems
