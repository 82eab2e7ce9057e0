"""Held-out loss and bits per byte, per data source, on packed rows with document masks.

    rows = heldout_rows(embedded_heldout(), seq_len=128, rows_per_source=64)   # numpy, cached
    result = evaluate(model, rows)          # {"loss", "bits_per_byte", "tokens", "per_source"}

    python -m experiments.evaluate --checkpoint WORKDIR --tasks heldout     # a trained run

Rows: each source's documents (a prepared data directory: ArrayRecord shards of token ids,
llama3_jax/data/prepare.py) in their stored order, each document's (input, next-token target)
pairs packed one after another into rows of `seq_len` (a document that does not fit goes on in
the next row as a new segment), segment ids for the document mask, positions restarting per
segment, loss mask 0 on padding. The first `rows_per_source` rows of every source: the same
tokens every call. Bytes are the UTF-8 bytes of the targets' text (each target token decoded
alone), so bits per byte compares models with different tokenizers.

The model runs in fp32 (its parameters cast, matmuls in fp32) and in batches of `batch_rows`
rows, so one program is compiled per model shape and every call sees the same shapes. On a mesh
(the model's parameters sharded, llama3_jax/infer/placement.py) the rows are split over its
data-like axes (a batch padded with masked rows to a multiple of them) and the sums gathered
to every process. The loss
is nats per target token, token-weighted over all sources (`loss`) and per source.
"""

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llama3_jax.data.prepare import read_manifest
from llama3_jax.data.tokenizers import load_tokenizer
from llama3_jax.infer.placement import Placement


def _documents(data_dir: pathlib.Path, source: dict) -> list[np.ndarray]:
  from array_record.python.array_record_module import ArrayRecordReader
  docs = []
  for shard in source["shards"]:
    reader = ArrayRecordReader(str(data_dir / shard))
    docs.extend(np.frombuffer(r, dtype="<i4") for r in reader.read_all())
    reader.close()
  return docs


def pack_rows(documents: list[np.ndarray], seq_len: int, rows: int) -> dict:
  """[rows, seq_len] numpy arrays (inputs, targets, segment_ids, positions, loss_mask) of the
  documents' next-token pairs, packed in order; fewer documents than rows leave padding."""
  out = {name: np.zeros((rows, seq_len), np.int32)
         for name in ("inputs", "targets", "segment_ids", "positions")}
  out["loss_mask"] = np.zeros((rows, seq_len), np.float32)
  row = col = 0
  segment = 0
  for ids in documents:
    inputs, targets = ids[:-1], ids[1:]
    start = 0
    while start < len(inputs) and row < rows:
      take = min(len(inputs) - start, seq_len - col)
      segment += 1
      where = (row, slice(col, col + take))
      out["inputs"][where] = inputs[start:start + take]
      out["targets"][where] = targets[start:start + take]
      out["segment_ids"][where] = segment
      out["positions"][where] = np.arange(take)
      out["loss_mask"][where] = 1.0
      start, col = start + take, col + take
      if col == seq_len:
        row, col = row + 1, 0
    if row == rows:
      break
  return out


@functools.lru_cache(maxsize=8)
def _cached_rows(data_dir: str, seq_len: int, rows_per_source: int) -> dict:
  data_dir = pathlib.Path(data_dir)
  manifest = read_manifest(data_dir)
  tokenizer = load_tokenizer(manifest["tokenizer"]["path"])
  piece_bytes = np.array([len(tokenizer.decode([i]).encode("utf-8"))
                          for i in range(manifest["tokenizer"]["vocab_size"])], np.int64)
  out = {}
  for name, source in sorted(manifest["sources"].items()):
    rows = pack_rows(_documents(data_dir, source), seq_len, rows_per_source)
    rows["bytes"] = int((piece_bytes[rows["targets"]] * rows["loss_mask"]).sum())
    out[name] = rows
  return out


def heldout_rows(data_dir=None, seq_len: int = 128, rows_per_source: int = 64) -> dict:
  """{source: rows dict (plus "bytes": the targets' UTF-8 bytes)} of a prepared data directory
  (default: the embedded held-out split, llama3_jax/data/corpus.py:embedded_heldout)."""
  if data_dir is None:
    from llama3_jax.data.corpus import embedded_heldout
    data_dir = embedded_heldout()
  return _cached_rows(str(pathlib.Path(data_dir).resolve()), seq_len, rows_per_source)


def fp32(model):
  """(graphdef, state) of `model` with fp32 parameters and fp32 compute."""
  from llama3_jax.model import Transformer
  config = model.config.replace(dtype="float32", param_dtype="float32")
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
  state = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nnx.state(model, nnx.Param))
  return graphdef, state


@functools.partial(jax.jit, static_argnums=0)
def _nll_sums(graphdef, state, batch):
  """(summed NLL in nats, summed mask) of one [B, T] batch."""
  model = nnx.merge(graphdef, state)
  logits_btv = model(batch["inputs"], segment_ids=batch["segment_ids"],
                     positions=batch["positions"])
  logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
  nll_bt = -jnp.take_along_axis(logp_btv, batch["targets"][..., None], axis=-1)[..., 0]
  return (nll_bt * batch["loss_mask"]).sum(), batch["loss_mask"].sum()


def _padded(batch: dict, rows: int) -> dict:
  """`batch` with copies of its last row, their loss masked, up to `rows` rows."""
  pad = rows - batch["inputs"].shape[0]
  if not pad:
    return batch
  out = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in batch.items()}
  out["loss_mask"][-pad:] = 0
  return out


def evaluate(model, rows: dict, batch_rows: int = 16) -> dict:
  """Held-out loss (nats per token) and bits per byte of `model`, overall and per source."""
  graphdef, state = fp32(model)
  placement = Placement.of(model)
  per_source, total_nll, total_tokens, total_bytes = {}, 0.0, 0.0, 0
  for name, source in rows.items():
    n_rows = source["inputs"].shape[0]
    if n_rows % batch_rows:
      raise ValueError(f"{n_rows} rows per source do not split into batches of {batch_rows}; "
                       "use a multiple of batch_rows")
    nll = tokens = 0.0
    for start in range(0, n_rows, batch_rows):
      batch = _padded({k: v[start:start + batch_rows] for k, v in source.items()
                        if k != "bytes"}, placement.padded_rows(batch_rows))
      with placement.active():
        s, n = placement.fetch(_nll_sums(graphdef, state,
                                         {k: placement.rows(v) for k, v in batch.items()}))
      nll, tokens = nll + float(s), tokens + float(n)
    per_source[name] = {"loss": nll / max(tokens, 1), "tokens": int(tokens),
                        "bytes": source["bytes"],
                        "bits_per_byte": nll / math.log(2) / max(source["bytes"], 1)}
    total_nll, total_tokens, total_bytes = (total_nll + nll, total_tokens + tokens,
                                            total_bytes + source["bytes"])
  return {"loss": total_nll / max(total_tokens, 1), "tokens": int(total_tokens),
          "bits_per_byte": total_nll / math.log(2) / max(total_bytes, 1),
          "per_source": per_source}
