"""Raw text sources: JSONL (a `text` field), plain text files and Parquet (a `text` column).

    skips = Skips(strict=False)
    for text in read_documents("data/part-0001.jsonl.gz", skips): ...

Bad records (a broken JSON line, a missing or non-string `text`, invalid UTF-8) are counted in
`skips` with the place of the first few, or raise a UserError naming file and line when
`strict`. A bad record never costs the rest of its file. A file that cannot be read to its end
(a truncated or corrupt gzip) keeps the documents before the damage and counts one
"unreadable file" skip, as curation does; strict mode raises for it too.
"""

import collections
import dataclasses
import gzip
import json
import pathlib
import zlib
from typing import Iterator

from llama3_jax.errors import UserError

TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".txt", ".txt.gz", ".parquet")


@dataclasses.dataclass
class Skips:
  strict: bool = False
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: list = dataclasses.field(default_factory=list)

  def skip(self, reason: str, where: str, fix: str) -> None:
    if self.strict:
      raise UserError(f"{where}: {reason}", f"{fix} (or run without strict to count and skip "
                      "bad records)")
    self.counts[reason] += 1
    if len(self.examples) < 5:
      self.examples.append(f"{where}: {reason}")

  def merge(self, other: "Skips") -> None:
    self.counts.update(other.counts)
    self.examples.extend(other.examples[:5 - len(self.examples)])

  def as_dict(self) -> dict:
    return {"counts": dict(self.counts), "examples": self.examples}


def list_files(inputs) -> list[pathlib.Path]:
  """Files of known formats under the given files, directories or glob patterns, sorted."""
  if isinstance(inputs, (str, pathlib.Path)):
    inputs = [inputs]
  files = []
  for item in inputs:
    item = str(item)
    path = pathlib.Path(item)
    if path.is_dir():
      candidates = sorted(p for p in path.rglob("*") if p.is_file())
    elif any(c in item for c in "*?["):
      candidates = sorted(pathlib.Path().glob(item) if not path.is_absolute()
                          else pathlib.Path("/").glob(item.lstrip("/")))
    elif path.is_file():
      candidates = [path]
    else:
      raise FileNotFoundError(f"input {item} does not exist; give files, directories or glob "
                              f"patterns of {', '.join(TEXT_SUFFIXES)} files")
    files += [p for p in candidates if p.name.endswith(TEXT_SUFFIXES)]
  if not files:
    raise FileNotFoundError(f"no {', '.join(TEXT_SUFFIXES)} files in {list(map(str, inputs))}")
  return files


def _open_text(path: pathlib.Path):
  opener = gzip.open if path.suffix == ".gz" else open
  # Decoding errors are caught per line below; surrogateescape keeps the bad bytes visible.
  return opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")


def _valid_utf8(text: str) -> bool:
  try:
    text.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


def read_documents(path, skips: Skips, *, text_field: str = "text") -> Iterator[str]:
  """The documents of one file, in order."""
  path = pathlib.Path(path)
  name = path.name
  if name.endswith(".parquet"):
    yield from _read_parquet(path, skips, text_field)
  elif name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
    number = 0
    try:
      with _open_text(path) as f:
        for number, line in enumerate(f, 1):
          text = _json_text(line, f"{path}:{number}", skips, text_field)
          if text is not None:
            yield text
    except _UNREADABLE as error:
      _unreadable(skips, f"{path}:{number + 1}", error)
  else:   # plain text: the whole file is one document
    try:
      with _open_text(path) as f:
        text = f.read()
    except _UNREADABLE as error:
      _unreadable(skips, str(path), error)
      return
    if not _valid_utf8(text):
      skips.skip("invalid UTF-8", str(path), "re-encode the file as UTF-8")
    elif text.strip():
      yield text
  # An empty file is legal but worth knowing about.
  if path.stat().st_size == 0:
    skips.counts["empty files"] += 1


# A truncated gzip ends in EOFError, a corrupt one in BadGzipFile (an OSError) or zlib.error.
_UNREADABLE = (OSError, EOFError, zlib.error)


def _unreadable(skips: Skips, where: str, error: BaseException) -> None:
  skips.skip("unreadable file (truncated or corrupt)", f"{where} ({type(error).__name__}: "
             f"{error})", "re-create the file, or remove it from the input")


def _json_text(line: str, where: str, skips: Skips, text_field: str) -> str | None:
  """The text of one JSONL line, or None (blank, or a bad record: counted in `skips`)."""
  if not line.strip():
    return None
  if not _valid_utf8(line):
    skips.skip("invalid UTF-8", where, "re-encode the file as UTF-8")
    return None
  try:
    record = json.loads(line)
  except json.JSONDecodeError as error:
    skips.skip(f"broken JSON ({error.msg})", where, "fix or remove the line")
    return None
  text = record.get(text_field) if isinstance(record, dict) else None
  if not isinstance(text, str):
    skips.skip(f"no string field {text_field!r}", where,
               f"give every record a {text_field!r} string or set the text field name")
    return None
  return text


def _read_parquet(path, skips, text_field):
  import pyarrow.parquet as pq
  table = pq.ParquetFile(path)
  if text_field not in table.schema_arrow.names:
    skips.skip(f"no column {text_field!r} (columns: {table.schema_arrow.names})", str(path),
               f"give the file a {text_field!r} column or set the text field name")
    return
  row = 0
  for batch in table.iter_batches(columns=[text_field], batch_size=1024):
    for text in batch.column(0).to_pylist():
      row += 1
      if not isinstance(text, str):
        skips.skip(f"null or non-string {text_field!r}", f"{path} row {row}",
                   "drop the row or fill the text")
        continue
      yield text
