"""The source of rows a run's DataConfig names (the loop's one call into data/).

    source = source_for(run.data, seed, vocab_size)   # shards, conversations, embedded, synthetic
"""

from llama3_jax.data import corpus
from llama3_jax.data.conversations.prepared import ConversationSource, is_conversation_data
from llama3_jax.data.loader import Loader
from llama3_jax.data.source import SyntheticSource


def source_for(data, seed: int, vocab_size: int, max_examples_per_row: int = 16):
  """The source a DataConfig names: prepared shards, prepared conversations (post-training;
  `max_examples_per_row` packed at most), the embedded corpus, or synthetic."""
  if data.synthetic:
    return SyntheticSource(seed, vocab_size)
  if data.path and is_conversation_data(data.path):
    return ConversationSource(data.path, seed=seed, vocab_size=vocab_size,
                              max_examples_per_row=max_examples_per_row)
  return Loader(data.path or corpus.embedded_corpus(), seed=seed, streams=data.streams,
                vocab_size=vocab_size)
