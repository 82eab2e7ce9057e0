"""Where a run's rows come from: the `Source` protocol, and the synthetic source.

    rows = source.read(number, stage_index, stage, (start, stop))

`number` is the batch's place in the data (1-based): the synthetic source is a pure function of
it; the prepared-data `Loader` (llama3_jax/data/loader.py) and the conversation source
(llama3_jax/data/conversations/prepared.py) keep their own place and save it per stream
(`get_state` / `set_state`), which the checkpoint stores beside the model.
"""

from typing import Protocol

from llama3_jax.data.batches import LM_FIELDS
from llama3_jax.data.synthetic import synthetic_batch


class Source(Protocol):
  """What the loop asks of a source of rows (defaults: a stateless source with no files)."""
  fields: tuple[str, ...]          # the batch fields it gives
  state_streams = ()               # the streams whose states a checkpoint saves
  manifest: dict = {}              # prepared data's manifest (its "tokenizer": path, sha256)

  def read(self, number: int, stage_index: int, stage, rows: tuple[int, int]) -> dict:
    """{field: [rows[1] - rows[0], T] array}: this process's rows of batch `number`."""
    ...

  def check_stages(self, stages) -> None:
    """Fails (a clear error) if a stage of the run cannot be read, before the run starts."""

  def get_state(self) -> dict | None:
    return None

  def set_state(self, states: dict, stages) -> None:
    pass

  def tokens_per_source(self) -> dict[str, int]:
    return {}


class SyntheticSource(Source):
  """The arithmetic-sequence batches of llama3_jax/data/synthetic.py (no files, no state)."""
  fields = tuple(LM_FIELDS)
  state_streams = ()   # nothing to checkpoint: a batch is a function of its number

  def __init__(self, seed: int, vocab_size: int):
    self.seed, self.vocab_size = seed, vocab_size

  def read(self, number: int, stage_index: int, stage, rows: tuple[int, int]) -> dict:
    batch = synthetic_batch(self.seed, number - 1, stage.batch_size, stage.seq_len,
                            self.vocab_size)
    return {name: value[rows[0]:rows[1]] for name, value in batch.items()}


