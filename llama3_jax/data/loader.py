"""Training batches from prepared shards: per-source packing, the stage's mixture, exact resume.

    loader = Loader(data_dir, seed=0, streams=8, vocab_size=512)
    batch = loader.next_batch(stage_index, stage)     # numpy [rows, seq_len] arrays
    state = loader.get_state(); loader.set_state(state, stages)

A batch source of llama3_jax/data/batches.py: `Batches` reads it through `read`.

The global batch is cut into `streams` fixed slices of rows. Stream i reads documents
i, i + streams, ... of every source (Grain's `ShardOptions` over streams, not over processes),
shuffled per epoch, packs each source's documents into rows with Grain's
`ConcatThenSplitIterDataset` (segment ids and positions restart per document; the targets are
the document's next tokens, so none crosses a document boundary), and mixes the per-source rows
with the stage's weights (Grain's `mix`, deterministic). Because rows, not documents, are mixed,
the weights are fractions of tokens.

Row r of the batch of a step comes from stream r // (rows / streams), whatever the mesh or the
number of JAX processes: a process builds only the streams whose rows its devices hold. The state of each stream (the Grain iterator's state,
the stage it packs for, the document offsets where that stage began, tokens per source) is
saved per stream, so a checkpoint resumes on any number of processes. When the stage changes,
each source continues after the last document the previous stage used.
"""

import dataclasses
import logging
import pathlib

import grain
import numpy as np
from grain import experimental as grain_experimental

from llama3_jax.data.corpus import DEFAULT_MIXTURE
from llama3_jax.data.prepare import read_manifest
from llama3_jax.data.source import Source
from llama3_jax.data.tokenizers import check_token_ids
from llama3_jax.errors import UserError


log = logging.getLogger(__name__)

# Read in the calling thread: 32+ pipelines (streams x sources) with Grain's default 16-thread
# prefetch each spend their time on thread hand-offs; records are tiny and reads sequential.
_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _tuples_out(x):
  """Grain's iterator states hold tuples that must come back as tuples (JSON has none)."""
  if isinstance(x, tuple):
    return {"__tuple__": [_tuples_out(v) for v in x]}
  if isinstance(x, dict):
    return {k: _tuples_out(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_tuples_out(v) for v in x]
  return x


def _tuples_in(x):
  if isinstance(x, dict):
    if set(x) == {"__tuple__"}:
      return tuple(_tuples_in(v) for v in x["__tuple__"])
    return {k: _tuples_in(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_tuples_in(v) for v in x]
  return x


def _open_shards(paths: list[str], documents: int, name: str):
  """The ArrayRecord shards of one source, each checked to open and to hold the documents the
  manifest counts: a missing, truncated or corrupt shard is named here, at start-up."""
  from array_record.python.array_record_module import ArrayRecordReader
  again = "prepare this source again (python -m experiments.prepare_data)"
  found = 0
  for path in paths:
    if not pathlib.Path(path).is_file():
      raise UserError(f"shard {path} of source {name!r} does not exist", again)
    try:
      reader = ArrayRecordReader(path)
      found += reader.num_records()
      reader.close()
    except (RuntimeError, OSError, ValueError) as error:   # ArrayRecord: a bare RuntimeError
      raise UserError(f"shard {path} of source {name!r} cannot be read (truncated or corrupt: "
                      f"{str(error).splitlines()[0]})", again) from None
  if found != documents:
    raise UserError(f"the shards of source {name!r} hold {found} documents, the manifest says "
                    f"{documents} ({paths[0]}...)", again)
  return grain.sources.ArrayRecordDataSource(paths)


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclasses.dataclass
class _Stream:
  index: int
  stage: int = -1
  offsets: dict = dataclasses.field(default_factory=dict)    # source -> first document
  consumed: dict = dataclasses.field(default_factory=dict)   # source -> last document used + 1
  tokens: dict = dataclasses.field(default_factory=dict)     # source -> loss tokens so far
  iterator: object = None


class Loader(Source):
  fields = ("inputs", "targets", "segment_ids", "positions", "loss_mask", "source")

  def __init__(self, data_dir, *, seed: int, streams: int, vocab_size: int,
               shuffle_window: int = 32):
    data_dir = pathlib.Path(data_dir)
    self.manifest = read_manifest(data_dir)
    self.sources = sorted(self.manifest["sources"])
    self.seed, self.num_streams, self.vocab_size = seed, streams, vocab_size
    self.shuffle_window = shuffle_window
    tokenizer_vocab = self.manifest["tokenizer"]["vocab_size"]
    if tokenizer_vocab > vocab_size:
      raise ValueError(f"{data_dir} was tokenized with a vocabulary of {tokenizer_vocab} "
                       f"({self.manifest['tokenizer']['path']}), larger than the model's "
                       f"vocab_size {vocab_size}; set model.vocab_size >= {tokenizer_vocab}")
    self.documents = {}
    for name in self.sources:
      paths = [str(data_dir / shard) for shard in self.manifest["sources"][name]["shards"]]
      count = self.manifest["sources"][name]["documents"]
      if count < streams:
        raise ValueError(f"source {name!r} has {count} documents, fewer than data.streams="
                         f"{streams}; every stream needs documents of every source: use "
                         "fewer streams or more data")
      self.documents[name] = grain.MapDataset.source(_open_shards(paths, count, name))
    self.streams: dict[int, _Stream] = {}
    self._pending: dict[int, dict] = {}

  def check_stages(self, stages) -> None:
    """Every stage's mixture against the sources the data has, before the first step: a stage
    that names a missing source fails now, not when it begins hours later. A stage on the
    default mixture uses the sources there are, and says which it lacks."""
    for i, stage in enumerate(stages):
      try:
        self.weights(stage)
      except ValueError as error:
        raise ValueError(f"train.stages[{i}]: {error}") from None
      if not stage.mixture:
        missing = [name for name, _ in DEFAULT_MIXTURE if name not in self.sources]
        if missing and set(self.sources) & {name for name, _ in DEFAULT_MIXTURE}:
          log.warning("train.stages[%d] uses Llama 3's default mixture, but the data has no "
                      "%s: it trains on %s, reweighted; give the stage a mixture to choose",
                      i, ", ".join(missing), ", ".join(self.weights(stage)))

  def weights(self, stage) -> dict[str, float]:
    mixture = dict(stage.mixture) if stage.mixture else {
        name: weight for name, weight in DEFAULT_MIXTURE if name in self.sources} or {
            name: 1.0 for name in self.sources}
    unknown = set(mixture) - set(self.sources)
    if unknown:
      raise ValueError(f"the stage's mixture names sources {sorted(unknown)} that the data "
                       f"does not have; it has {self.sources}: prepare them (python -m "
                       "experiments.prepare_data --source NAME) or drop them from the mixture")
    if not any(w > 0 for w in mixture.values()) or any(w < 0 for w in mixture.values()):
      raise ValueError(f"mixture weights {mixture} must be >= 0 with at least one > 0")
    return {name: mixture[name] for name in self.sources if mixture.get(name, 0) > 0}

  def _pipeline(self, stream: _Stream, stage_index: int, stage):
    weights = self.weights(stage)
    packed = []
    for name in weights:
      source_id = self.sources.index(name)
      offset = stream.offsets.get(name, 0)
      docs = self.documents[name][stream.index::self.num_streams]
      docs = docs.shuffle(seed=_seed(self.seed, stream.index, source_id)).repeat(None)

      def split(i, record, offset=offset):
        ids = np.frombuffer(record, dtype="<i4").astype(np.int32)
        return {"inputs": ids[:-1], "targets": ids[1:],
                "document": np.full(ids.size - 1, offset + i, np.int64)}

      rows = grain_experimental.ConcatThenSplitIterDataset(
          docs[offset:].map_with_index(split).to_iter_dataset(_READ),
          length_struct={k: stage.seq_len for k in ("inputs", "targets", "document")})
      packed.append(rows.map(lambda row, s=source_id: {**row, "source": np.int32(s)}))
    mixed = grain.IterDataset.mix(packed, list(weights.values()))
    # Grain's mix interleaves in a fixed pattern, the same in every stream: shuffle rows in
    # small windows (seeded per stream) so that each batch holds a mix of sources.
    return iter(grain_experimental.WindowShuffleIterDataset(
        mixed, window_size=self.shuffle_window,
        seed=_seed(self.seed, stream.index, stage_index, len(self.sources))))

  def _stream(self, index: int, stage_index: int, stage) -> _Stream:
    if index not in self.streams:
      self.streams[index] = (self._restore(index) if index in self._pending
                             else _Stream(index))
    stream = self.streams[index]
    if stream.stage != stage_index:
      # A new stage: every source continues after the last document the old stage used.
      stream.offsets = {**stream.offsets, **stream.consumed}
      stream.stage, stream.iterator = stage_index, self._pipeline(stream, stage_index, stage)
    return stream

  def next_batch(self, stage_index: int, stage, rows: tuple[int, int] | None = None) -> dict:
    """Rows [start, stop) (default: all) of the stage's next global batch, as numpy arrays."""
    batch_size = stage.batch_size
    if batch_size % self.num_streams:
      raise ValueError(f"the stage's batch of {batch_size} rows is not divisible by "
                       f"data.streams={self.num_streams}; make streams a divisor of every "
                       "stage's rows")
    per_stream = batch_size // self.num_streams
    start, stop = rows or (0, batch_size)
    first, last = start // per_stream, -(-stop // per_stream)
    out = []
    for index in range(first, last):
      stream = self._stream(index, stage_index, stage)
      for _ in range(per_stream):
        row = next(stream.iterator)
        name = self.sources[int(row["source"])]
        used = row["document"][row["inputs_segment_ids"] > 0]
        if used.size:
          stream.consumed[name] = max(stream.consumed.get(name, 0), int(used.max()) + 1)
        stream.tokens[name] = stream.tokens.get(name, 0) + int(used.size)
        out.append(row)
    out = out[start - first * per_stream:][:stop - start]
    batch = {"inputs": np.stack([r["inputs"] for r in out]),
             "targets": np.stack([r["targets"] for r in out]),
             "segment_ids": np.stack([r["inputs_segment_ids"] for r in out]),
             "positions": np.stack([r["inputs_positions"] for r in out]),
             "source": np.stack([r["source"] for r in out])}
    batch["loss_mask"] = (batch["segment_ids"] > 0).astype(np.float32)
    check_token_ids(batch["inputs"], self.vocab_size, "the training data")
    check_token_ids(batch["targets"], self.vocab_size, "the training data")
    return batch

  @property
  def state_streams(self) -> range:
    """The streams whose states a checkpoint holds."""
    return range(self.num_streams)

  def read(self, number: int, stage_index: int, stage, rows: tuple[int, int]) -> dict:
    """Rows [start, stop) of the next batch (the loader keeps its place: `number` is unused)."""
    return self.next_batch(stage_index, stage, rows)

  def tokens_per_source(self) -> dict[str, int]:
    """Loss tokens delivered so far by this process's streams, per source."""
    totals = dict.fromkeys(self.sources, 0)
    for stream in self.streams.values():
      for name, count in stream.tokens.items():
        totals[name] += count
    return totals

  def get_state(self) -> dict[int, dict]:
    return {i: {"stage": s.stage, "offsets": s.offsets, "consumed": s.consumed,
                "tokens": s.tokens,
                "grain": _tuples_out(s.iterator.get_state()) if s.iterator else None}
            for i, s in self.streams.items()}

  def set_state(self, states: dict, stages) -> None:
    """Takes states saved by `get_state` (any process's); `stages` are the training stages.

    Streams are rebuilt lazily, when this process first reads them, so a process may be given
    every stream's state and uses only its own.
    """
    self.streams.clear()
    self._pending = {int(i): state for i, state in states.items()}
    self._stages = stages

  def _restore(self, index: int) -> _Stream:
    state = self._pending.pop(index)
    stream = _Stream(index, state["stage"], dict(state["offsets"]), dict(state["consumed"]),
                     dict(state["tokens"]))
    if stream.stage >= 0:
      stream.iterator = self._pipeline(stream, stream.stage, self._stages[stream.stage])
      stream.iterator.set_state(_tuples_in(state["grain"]))
    return stream
