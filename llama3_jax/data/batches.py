"""Global batches for the train step: the batch format, the one iterator, where rows come from.

    batches = Batches(source, batch_sharding, fields=LM_FIELDS)
    batches.set_stage(stage_index, stage)       # the one call when the batch shape changes
    batch = next(batches)                       # dict of global [B, T] jax.Arrays
    abstract = batches.abstract(stage)          # the same dict as ShapeDtypeStructs (compiling)

A batch is a dict of [B, T] arrays named by a format (`LM_FIELDS` for language modelling:
`inputs`, `targets`, `segment_ids`, `positions`, `loss_mask`); an objective names the format it
reads (llama3_jax/objectives/). A source (the `Source` protocol, llama3_jax/data/source.py)
gives the rows of each batch that this process holds, as numpy arrays. `Batches` counts batches
(`position`, saved with the checkpoint), finds the rows this process's devices hold, and assembles global arrays from every
process's rows (`jax.make_array_from_process_local_data`).
"""

import jax
import numpy as np


# Language-modelling batches: token ids, next-token targets, document ids (0 = padding) and
# positions in the document (the document mask and RoPE), and the weight of each target.
LM_FIELDS = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
             "positions": np.int32, "loss_mask": np.float32}


def abstract_batch(fields: dict, batch_size: int, seq_len: int, sharding) -> dict:
  """ShapeDtypeStructs of a global [batch_size, seq_len] batch of `fields`."""
  return {name: jax.ShapeDtypeStruct((batch_size, seq_len), dtype, sharding=sharding)
          for name, dtype in fields.items()}


class Batches:
  """The step's global batches, read from `source` on every process alike."""

  def __init__(self, source, sharding, fields: dict = LM_FIELDS):
    missing = sorted(set(fields) - set(source.fields))
    if missing:
      raise ValueError(f"the objective reads batch fields {missing} that the data source "
                       f"({type(source).__name__}) does not give; it gives "
                       f"{sorted(source.fields)}")
    self.source, self.sharding, self.fields = source, sharding, dict(fields)
    self.position = 0               # batches read so far
    self.stage_index = self.stage = None

  def set_stage(self, index: int, stage) -> None:
    self.stage_index, self.stage = index, stage

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    stage = self.stage
    rows = process_rows(self.sharding, stage.batch_size, stage.seq_len)
    self.position += 1
    local = self.source.read(self.position, self.stage_index, stage, rows)
    return to_global({name: local[name] for name in self.fields}, self.sharding,
                     stage.batch_size)

  def abstract(self, stage) -> dict:
    return abstract_batch(self.fields, stage.batch_size, stage.seq_len, self.sharding)

  # The source's checkpointable state: per stream (None where the position says it all).
  def get_state(self) -> dict | None:
    return self.source.get_state()

  def set_state(self, position: int, states: dict | None, stages) -> None:
    self.position = position
    self.source.set_state(states or {}, stages)

  def log_fields(self, result=None) -> dict:
    """Tokens delivered so far per data source, summed over all processes (a collective)."""
    local = self.source.tokens_per_source()
    if local and jax.process_count() > 1:
      from jax.experimental import multihost_utils
      counts = multihost_utils.process_allgather(np.array(list(local.values()), np.int64))
      local = dict(zip(local, counts.reshape(-1, len(local)).sum(0).tolist()))
    return {f"data/{name}_tokens": count for name, count in local.items()}


def _span(sharding, shape, dim: int) -> tuple[int, int]:
  """The [start, stop) of dimension `dim` that this process's devices hold."""
  spans = [index[dim] for index in sharding.addressable_devices_indices_map(shape).values()]
  return (min(s.start or 0 for s in spans),
          max(shape[dim] if s.stop is None else s.stop for s in spans))


def process_rows(sharding, batch_size: int, seq_len: int) -> tuple[int, int]:
  """The rows [start, stop) of a global [batch_size, seq_len] batch that this process holds."""
  return _span(sharding, (batch_size, seq_len), 0)


def to_global(local_batch: dict, sharding, batch_size: int) -> dict:
  """Global jax.Arrays from this process's rows (all processes call it together).

  Where the sequence is split over processes too (context parallelism across hosts), each
  process passes on only its columns.
  """
  out = {}
  for key, value in local_batch.items():
    shape = (batch_size,) + value.shape[1:]
    start, stop = _span(sharding, shape, 1)
    out[key] = jax.make_array_from_process_local_data(sharding, value[:, start:stop], shape)
  return out
