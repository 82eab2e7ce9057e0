"""Conversation data, prepared once into a shard and read as packed rows with exact resume.

    prepare_conversations("sft.jsonl", "tokenizer.model", "data/sft", kind="sft", max_tokens=256)
    source = ConversationSource("data/sft", seed=0, vocab_size=512)   # a source for `train`

`prepare_conversations` checks every example (llama3_jax/data/conversations/__init__.py), encodes
it into weighted pieces, fits it to `max_tokens` (the prompt truncated from the left, or the
example skipped: counted either way) and writes one record per example to
`examples.array_record`, with a `manifest.json` of counts. The source reads the records through
Grain: shuffled, repeated, and packed whole into rows by first-fit packing (an example is never
split, so no response loses its prompt); its iterator state is the checkpoint's data state.

Batch fields (`CONVERSATION_FIELDS`): pre-training's (`inputs`, `targets`, `positions`,
`segment_ids`, `loss_mask` = the pieces' weights) plus `response`: per target, which response
of which example of the row it belongs to (3 k - 2 chosen, 3 k - 1 rejected, 3 k edited, for
example k = 1, 2, ... of the row), 0 elsewhere; with precomputed reference log-probs
(`add_reference_logps`), `reference_logp` per target. Segment ids give each document
of an example its own id and each shared-prompt response a shared-prefix id, so no token
attends across examples.
"""

import hashlib
import json
import os
import pathlib

import grain
import jax
import numpy as np
from grain import experimental as grain_experimental

from llama3_jax.data.batches import LM_FIELDS
from llama3_jax.data.source import Source
# (Grain's iterator states hold tuples; JSON turns them into lists.)
from llama3_jax.data.loader import _tuples_in, _tuples_out
from llama3_jax.data.tokenizers import check_token_ids, load_tokenizer
from llama3_jax.model.attention_ops import shared_prefix_segments
from llama3_jax.data import conversations

FORMAT = "llama3_jax.conversations.v1"
MANIFEST = "manifest.json"
RECORDS = "examples.array_record"
CONVERSATION_FIELDS = {**LM_FIELDS, "response": np.int32}
_COLUMNS = ("inputs", "targets", "weights", "positions", "doc", "share", "response")
_DOCS = 4   # documents per example at most (separate layout: edited, chosen, rejected)
_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def sha256(path) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


REFERENCE = "reference"   # the optional column of precomputed reference log-probs (float32)


def encode_record(pieces) -> bytes:
  """One example's pieces as int32 [7, n] bytes (the columns of `_COLUMNS`)."""
  columns = [np.concatenate([getattr(p, c) for p in pieces]) for c in _COLUMNS[:4]]
  for name in _COLUMNS[4:]:
    columns.append(np.concatenate([np.full(p.inputs.size, getattr(p, name)) for p in pieces]))
  return np.stack(columns).astype("<i4").tobytes()


def decode_record(record: bytes, columns=_COLUMNS) -> dict:
  values = np.frombuffer(record, dtype="<i4").astype(np.int32).reshape(len(columns), -1)
  out = dict(zip(columns, values))
  if REFERENCE in out:
    out[REFERENCE] = out[REFERENCE].view(np.float32)
  return out


def _record_bytes(record: dict) -> bytes:
  columns = [record[c].astype("<i4") for c in _COLUMNS]
  if REFERENCE in record:
    columns.append(record[REFERENCE].astype("<f4").view("<i4"))
  return np.stack(columns).tobytes()


def example_pieces(tokenizer, example: dict, kind: str, layout: str, reward: bool = False,
                   order_seed: int | None = None):
  """`order_seed`: the responses in a shuffled order (seeded), as the reward model reads them."""
  if kind == "sft":
    return conversations.sft_pieces(tokenizer, example["messages"])
  names = [name for name in ("edited", "chosen", "rejected") if name in example]
  if order_seed is not None:
    np.random.default_rng(order_seed).shuffle(names)
  return conversations.preference_pieces(tokenizer, example["messages"],
                                         {name: example[name] for name in names}, layout, reward)


def prepare_conversations(input_path, tokenizer_path, out_dir, *, kind: str, max_tokens: int,
                          layout: str = "shared", truncation: str = "left",
                          strict: bool = False, reward: bool = False) -> dict:
  """Checks and encodes a conversation file into `out_dir`; returns the manifest.

  truncation "left": a too-long example loses prompt tokens after BOS (counted); "skip": it is
  dropped (counted). strict: a bad example is an error naming its line, not a skip. reward:
  preference rows for the reward model (each response's <|eot_id|> an input, the responses in
  a shuffled order, seeded by the line).
  """
  if truncation not in ("left", "skip"):
    raise ValueError(f"truncation={truncation!r}; use 'left' or 'skip'")
  input_path, out_dir = pathlib.Path(input_path), pathlib.Path(out_dir)
  tokenizer_path = pathlib.Path(tokenizer_path).resolve()
  tokenizer = load_tokenizer(tokenizer_path)
  settings = {"format": FORMAT, "kind": kind, "layout": layout if kind == "preference" else None,
              "max_tokens": max_tokens, "truncation": truncation, "reward": reward,
              "input": str(input_path.resolve()), "input_sha256": sha256(input_path),
              "tokenizer": {"path": str(tokenizer_path), "sha256": sha256(tokenizer_path),
                            "vocab_size": tokenizer.vocab_size}}
  manifest_path = out_dir / MANIFEST
  if manifest_path.exists():
    manifest = json.loads(manifest_path.read_text())
    if {k: manifest.get(k) for k in settings} == settings:
      return manifest   # prepared already, from the same file with the same settings
    raise ValueError(f"{out_dir} holds conversations prepared from other input or settings; "
                     "use another output directory or delete it")
  from array_record.python.array_record_module import ArrayRecordWriter
  out_dir.mkdir(parents=True, exist_ok=True)
  tmp = out_dir / (RECORDS + ".tmp")
  writer = ArrayRecordWriter(str(tmp), "group_size:1")
  counts = {"examples": 0, "tokens": 0, "weighted_tokens": 0, "truncated": 0,
            "truncated_tokens": 0}
  skipped, skipped_examples = {}, []

  def skip(reason: str, where: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1
    if len(skipped_examples) < 5:
      skipped_examples.append(where)

  try:
    for line, example in conversations.read_examples(input_path, kind):
      if isinstance(example, conversations.ExampleError):
        if strict:
          raise example
        skip("bad example", str(example))
        continue
      pieces = example_pieces(tokenizer, example, kind, layout, reward,
                              order_seed=line if reward else None)
      if truncation == "left":
        pieces, dropped = conversations.truncate_left(pieces, max_tokens)
      else:
        dropped = max(0, sum(p.inputs.size for p in pieces) - max_tokens)
        pieces = [] if dropped else pieces
      if not pieces:
        skip("longer than max_tokens", f"{input_path}:{line}: {dropped} tokens too long")
        continue
      if not any(p.weights.any() for p in pieces):
        skip("nothing to learn after truncation", f"{input_path}:{line}")
        continue
      counts["truncated"] += bool(dropped)
      counts["truncated_tokens"] += dropped
      writer.write(encode_record(pieces))
      counts["examples"] += 1
      counts["tokens"] += sum(p.inputs.size for p in pieces)
      counts["weighted_tokens"] += int(sum(p.weights.sum() for p in pieces))
  except BaseException:
    writer.close()
    tmp.unlink(missing_ok=True)
    raise
  writer.close()
  if counts["examples"] == 0:
    tmp.unlink(missing_ok=True)
    raise ValueError(f"no usable examples in {input_path} (skipped: {skipped}; first: "
                     f"{skipped_examples[:1]}); check the file's format (kind={kind})")
  os.replace(tmp, out_dir / RECORDS)
  manifest = {**settings, **counts, "skipped": skipped, "skipped_examples": skipped_examples}
  tmp_manifest = manifest_path.with_name(MANIFEST + ".tmp")
  tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True))
  os.replace(tmp_manifest, manifest_path)
  return manifest


def read_conversation_manifest(data_dir) -> dict:
  path = pathlib.Path(data_dir) / MANIFEST
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist; prepare the conversations first "
                            "(llama3_jax.data.conversations.prepared.prepare_conversations)")
  try:
    manifest = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON ({error.msg}); prepare the data again") from None
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path} is not prepared conversation data (format "
                     f"{manifest.get('format')!r}, expected {FORMAT!r})")
  return manifest


def is_conversation_data(data_dir) -> bool:
  path = pathlib.Path(data_dir) / MANIFEST
  try:
    return json.loads(path.read_text()).get("format") == FORMAT
  except (OSError, ValueError):
    return False


class ConversationSource(Source):
  """Packed rows of prepared conversations: a batch source of llama3_jax/data/batches.py.

  Every process reads the one Grain pipeline and keeps its rows (post-training data is small
  next to the step); its state is saved as stream 0.
  """
  fields = tuple(CONVERSATION_FIELDS)
  state_streams = range(1)

  def __init__(self, data_dir, *, seed: int, vocab_size: int, max_examples_per_row: int = 16):
    self.data_dir = pathlib.Path(data_dir)
    self.manifest = read_conversation_manifest(self.data_dir)
    if self.manifest["tokenizer"]["vocab_size"] > vocab_size:
      raise ValueError(f"{self.data_dir} was tokenized with a vocabulary of "
                       f"{self.manifest['tokenizer']['vocab_size']}, larger than the model's "
                       f"vocab_size {vocab_size}; prepare it with the model's tokenizer")
    self.seed, self.vocab_size = seed, vocab_size
    self.max_examples_per_row = max_examples_per_row
    self.columns = tuple(self.manifest.get("columns", _COLUMNS))
    if REFERENCE in self.columns:
      self.fields = self.fields + ("reference_logp",)
    self.examples = grain.MapDataset.source(
        grain.sources.ArrayRecordDataSource([str(self.data_dir / RECORDS)]))
    self.iterator, self.seq_len, self.tokens = None, None, 0

  def check_stages(self, stages) -> None:
    if len(stages) != 1:
      raise ValueError(f"conversation data trains in one stage, the config has {len(stages)}; "
                       "set train.stages to one dict(until_tokens=None, batch_tokens=..., "
                       "seq_len=...)")
    stage = stages[0]
    if stage.mixture:
      raise ValueError("train.stages[0] has a mixture, but conversation data has no sources; "
                       "drop the mixture")
    if stage.seq_len < self.manifest["max_tokens"]:
      raise ValueError(f"train.stages[0].seq_len={stage.seq_len} is shorter than the "
                       f"{self.manifest['max_tokens']} tokens {self.data_dir} was prepared to "
                       "fit; prepare it with max_tokens <= seq_len or raise seq_len")

  def _pipeline(self, batch_size: int, seq_len: int):
    examples = self.examples.shuffle(seed=self.seed).repeat(None).map(
        lambda record: decode_record(record, self.columns))
    packed = grain_experimental.FirstFitPackIterDataset(
        examples.to_iter_dataset(_READ), length_struct={c: seq_len for c in self.columns},
        num_packing_bins=batch_size, seed=self.seed, shuffle_bins=True,
        max_sequences_per_bin=self.max_examples_per_row)
    return iter(packed)

  def read(self, number: int, stage_index: int, stage, rows: tuple[int, int]) -> dict:
    if self.iterator is None or self.seq_len != stage.seq_len:
      self.iterator, self.seq_len = self._pipeline(stage.batch_size, stage.seq_len), stage.seq_len
      if getattr(self, "_pending", None) is not None:
        self.iterator.set_state(self._pending)
        self._pending = None
    out = [next(self.iterator) for _ in range(stage.batch_size)]
    self.tokens += int(sum(r["weights"].sum() for r in out))
    batch = rows_to_batch(out)
    check_token_ids(batch["inputs"], self.vocab_size, str(self.data_dir))
    return {name: value[rows[0]:rows[1]] for name, value in batch.items()}

  def get_state(self):
    if self.iterator is None or jax.process_index() != 0:
      return {} if self.iterator is not None else None
    return {0: {"grain": _tuples_out(self.iterator.get_state()), "tokens": self.tokens}}

  def set_state(self, states, stages) -> None:
    state = (states or {}).get(0)
    self.iterator, self.seq_len = None, None
    self._pending = _tuples_in(state["grain"]) if state else None
    self.tokens = state["tokens"] if state else 0

  def tokens_per_source(self) -> dict[str, int]:
    return {self.manifest["kind"]: self.tokens}


def rows_to_batch(rows: list[dict]) -> dict:
  """Packed Grain rows -> the batch fields (see the module docstring)."""
  stack = lambda key: np.stack([r[key] for r in rows])
  example_bt = stack("inputs_segment_ids")                 # 1, 2, ... per example; 0 = padding
  doc_bt, share_bt, response_bt = stack("doc"), stack("share"), stack("response")
  document_bt = np.where(example_bt > 0, example_bt * _DOCS + doc_bt, 0)
  segment_bt = np.where(share_bt > 0, shared_prefix_segments(document_bt, share_bt), document_bt)
  response_id = np.where(response_bt > 0, (example_bt - 1) * 3 + response_bt, 0)
  batch = {"inputs": stack("inputs"), "targets": stack("targets"),
           "positions": stack("positions"), "segment_ids": segment_bt.astype(np.int32),
           "loss_mask": stack("weights").astype(np.float32),
           "response": response_id.astype(np.int32)}
  if REFERENCE in rows[0]:
    batch["reference_logp"] = stack(REFERENCE).astype(np.float32)
  return batch


def example_rows(records: list[dict], seq_len: int) -> dict:
  """A batch of one example per row (records from `decode_record`), padded to `seq_len`: for
  scoring and for tests; training packs rows with `ConversationSource`."""
  rows = []
  for record in records:
    n = record["inputs"].size
    if n > seq_len:
      raise ValueError(f"an example of {n} tokens does not fit seq_len={seq_len}")
    row = {k: np.pad(v, (0, seq_len - n)) for k, v in record.items()}
    row["inputs_segment_ids"] = np.pad(np.ones(n, np.int32), (0, seq_len - n))
    rows.append(row)
  return rows_to_batch(rows)


def read_records(data_dir) -> list[dict]:
  """Every example of prepared conversations, in file order (decoded)."""
  manifest = read_conversation_manifest(data_dir)
  source = grain.sources.ArrayRecordDataSource([str(pathlib.Path(data_dir) / RECORDS)])
  columns = tuple(manifest.get("columns", _COLUMNS))
  return [decode_record(source[i], columns) for i in range(len(source))]


def add_reference_logps(data_dir, out_dir, token_logps, *, model_path: str,
                        batch_size: int = 32) -> dict:
  """Writes `data_dir`'s examples to `out_dir` with the reference model's log-prob of every
  target (DPO's `dpo.reference="precomputed"`): `token_logps(batch) -> [B, T]` is the
  reference model on one example per row. Returns the new manifest."""
  from array_record.python.array_record_module import ArrayRecordWriter
  manifest = read_conversation_manifest(data_dir)
  out_dir = pathlib.Path(out_dir)
  settings = {"from": str(pathlib.Path(data_dir).resolve()), "model": str(model_path)}
  if (out_dir / MANIFEST).exists():
    done = read_conversation_manifest(out_dir)
    if done.get("reference") == settings:
      return done
    raise ValueError(f"{out_dir} holds reference log-probs of other data or another model; "
                     "use another directory or delete it")
  out_dir.mkdir(parents=True, exist_ok=True)
  records = read_records(data_dir)
  tmp = out_dir / (RECORDS + ".tmp")
  writer = ArrayRecordWriter(str(tmp), "group_size:1")
  try:
    for start in range(0, len(records), batch_size):
      chunk = records[start:start + batch_size]
      logp_bt = np.asarray(token_logps(example_rows(chunk, manifest["max_tokens"])))
      for row, record in enumerate(chunk):
        writer.write(_record_bytes({**record,
                                    REFERENCE: logp_bt[row, :record["inputs"].size]}))
  finally:
    writer.close()
  os.replace(tmp, out_dir / RECORDS)
  manifest = {**manifest, "columns": list(_COLUMNS) + [REFERENCE], "reference": settings}
  (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
  return manifest
