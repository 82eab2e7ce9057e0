"""A deterministic, learnable synthetic source: training without data files (data.synthetic).

The global batch of step k is a pure function of (seed, k, shape): the same for every mesh
layout and process count, and its "iterator state" is just the step. Rows are packed documents
of random length; each document counts upward with a fixed stride modulo the vocabulary
(start and stride random), so a model can learn it and the loss falls.
"""

import numpy as np


def synthetic_batch(seed: int, step: int, batch_size: int, seq_len: int,
                    vocab_size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng([seed, step])
  tokens = np.empty((batch_size, seq_len + 1), np.int32)
  segments = np.empty((batch_size, seq_len + 1), np.int32)
  positions = np.empty((batch_size, seq_len + 1), np.int32)
  for row in range(batch_size):
    start = 0
    doc = 1
    while start < seq_len + 1:
      length = int(rng.integers(8, max(seq_len // 2, 9)))
      first, stride = rng.integers(0, vocab_size), rng.choice([1, 2, 3, 5, 7])
      end = min(start + length, seq_len + 1)
      tokens[row, start:end] = (first + stride * np.arange(end - start)) % vocab_size
      segments[row, start:end] = doc
      positions[row, start:end] = np.arange(end - start)
      start, doc = end, doc + 1
  # Targets are the next token within the same document; the last token of a document has no
  # target in it, so its loss is masked.
  same_doc = segments[:, 1:] == segments[:, :-1]
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "segment_ids": segments[:, :-1], "positions": positions[:, :-1],
          "loss_mask": same_doc.astype(np.float32)}
