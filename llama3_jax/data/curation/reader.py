"""Streaming reader of JSONL corpora: one document at a time, malformed lines counted or fatal.

Each input line should be a JSON object with a string `text` (field names in `ReadConfig`).
A line that is not valid UTF-8, not JSON, not an object, or lacks a string text is a *skip*:
counted by reason with the file and line of the first few, or, with `strict`, a
`CurationInputError` naming the file, the line and the fix. An empty file, or one that cannot
be read to its end (truncated gzip), is listed as a file problem (documents read before the
damage are kept); strict mode raises for those too. Blank lines are ignored (and counted).
Every pass re-reads a file the same way, so a document's position among a file's valid
documents is its id in every pass.
"""

import dataclasses
import datetime
import gzip
import json
import math
import pathlib
import zlib
from collections.abc import Iterator

from llama3_jax.data.curation.config import ReadConfig
from llama3_jax.errors import UserError

SUFFIXES = (".jsonl", ".jsonl.gz")
MAX_EXAMPLES = 20   # skipped lines listed in stats.json, per file
FILE_REASONS = ("unreadable", "empty_file")   # reported per file, not counted as lines
_FIXES = {
    "invalid_utf8": "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
    "bad_json": "make each line one complete JSON object",
    "not_object": "make each line a JSON object such as {\"text\": \"...\"}",
    "missing_text": "give every line a text field (or set read.text_field)",
    "non_string_text": "make the text field a string",
    "unreadable": "re-create the file (it is truncated or not gzip)",
    "empty_file": "remove the empty file",
}


class CurationInputError(UserError):
  """Bad input in strict mode, or no input at all (a UserError: one line from the launcher,
  also when raised in a worker process, where the frame that raised it is lost)."""


@dataclasses.dataclass
class Doc:
  index: int          # position among the file's valid documents
  line: int           # 1-based line number in the file
  record: dict        # the parsed JSON object
  text: str


@dataclasses.dataclass
class ReadReport:
  """What one pass over one file skipped; merged into stats.json."""
  path: str
  docs: int = 0
  blank_lines: int = 0
  skipped: dict = dataclasses.field(default_factory=dict)         # line reason -> count
  examples: list = dataclasses.field(default_factory=list)        # first few skipped lines
  file_problems: list = dataclasses.field(default_factory=list)   # empty or unreadable file

  def skip(self, reason: str, line: int, detail: str, strict: bool):
    entry = {"file": self.path, "line": line, "reason": reason, "detail": detail[:200]}
    if strict:
      where = f"{self.path}:{line}" if line else self.path
      raise CurationInputError(f"{where}: {reason.replace('_', ' ')} ({detail}); fix: "
                               f"{_FIXES[reason]}, or run without --strict to skip and count it")
    if reason in FILE_REASONS:
      self.file_problems.append(entry)
      return
    self.skipped[reason] = self.skipped.get(reason, 0) + 1
    if len(self.examples) < MAX_EXAMPLES:
      self.examples.append(entry)


def list_inputs(input_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """Sorted *.jsonl and *.jsonl.gz files under `input_dir` (recursively)."""
  root = pathlib.Path(input_dir)
  if not root.is_dir():
    raise CurationInputError(f"input directory {str(root)!r} does not exist")
  files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
  if not files:
    raise CurationInputError(f"no *.jsonl or *.jsonl.gz files in {str(root)!r}")
  return files


def read_docs(path: pathlib.Path, cfg: ReadConfig, report: ReadReport) -> Iterator[Doc]:
  """Yields the valid documents of `path`; skips land in `report` (or raise when strict)."""
  opener = gzip.open if path.name.endswith(".gz") else open
  number = 0
  try:
    with opener(path, "rb") as f:
      for number, raw in enumerate(f, 1):
        doc = _parse(raw, number, cfg, report)
        if doc is not None:
          doc.index = report.docs
          report.docs += 1
          yield doc
  except (OSError, EOFError, zlib.error) as error:   # truncated or corrupt gzip, I/O error
    report.skip("unreadable", number + 1, f"{type(error).__name__}: {error}", cfg.strict)
    return
  if number == 0:
    report.skip("empty_file", 0, "no lines", cfg.strict)
  elif report.docs == 0 and report.skipped:   # say so loudly: the whole file was dropped
    report.file_problems.append({
        "file": report.path, "line": 0, "reason": "no_valid_documents",
        "detail": f"all {sum(report.skipped.values())} non-blank lines skipped: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items()))})


def _parse(raw: bytes, number: int, cfg: ReadConfig, report: ReadReport) -> Doc | None:
  if number == 1 and raw.startswith(b"\xef\xbb\xbf"):   # a UTF-8 byte-order mark
    raw = raw[3:]
  if not raw.strip():
    report.blank_lines += 1
    return None
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as error:
    report.skip("invalid_utf8", number, str(error), cfg.strict)
    return None
  try:
    record = json.loads(line)
  except json.JSONDecodeError as error:
    report.skip("bad_json", number, str(error), cfg.strict)
    return None
  if not isinstance(record, dict):
    report.skip("not_object", number, f"got {type(record).__name__}", cfg.strict)
    return None
  if cfg.text_field not in record:
    report.skip("missing_text", number, f"no {cfg.text_field!r} field", cfg.strict)
    return None
  text = record[cfg.text_field]
  if not isinstance(text, str):
    report.skip("non_string_text", number, f"{cfg.text_field!r} is {type(text).__name__}",
                cfg.strict)
    return None
  return Doc(index=-1, line=number, record=record, text=text)


def parse_timestamp(record: dict, fields: tuple[str, ...]) -> float | None:
  """Seconds since the epoch from the first present field; None if absent, NaN if unparseable.

  Numbers are taken as epoch seconds; ISO-8601 strings without a zone are read as UTC.
  """
  for name in fields:
    value = record.get(name)
    if value is None or isinstance(value, bool):
      continue
    if isinstance(value, (int, float)):
      return float(value) if math.isfinite(value) else math.nan
    if isinstance(value, str):
      try:
        t = datetime.datetime.fromisoformat(value.strip())
      except ValueError:
        return math.nan
      if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
      return t.timestamp()
    return math.nan
  return None


def read_labelled(path: str, label_field: str, cfg: ReadConfig = ReadConfig()):
  """(texts, labels, line numbers) of a labelled JSONL; any malformed line is an error."""
  texts, labels, numbers = [], [], []
  p = pathlib.Path(path)
  if not p.is_file():
    raise CurationInputError(f"labelled examples {path!r} do not exist")
  for doc in read_docs(p, dataclasses.replace(cfg, strict=True), ReadReport(str(p))):
    if label_field not in doc.record:
      raise CurationInputError(f"{path}:{doc.line}: no {label_field!r} field; fix: label every "
                               "example")
    texts.append(doc.text)
    labels.append(doc.record[label_field])
    numbers.append(doc.line)
  return texts, labels, numbers
