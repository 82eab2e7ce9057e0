"""Batched generation with a KV cache: prefill the prompts in one pass, then one token a step.

    generator = Generator(model)                          # or Generator(model, MeshConfig(...))
    results = generator.generate([ids_a, ids_b], max_new_tokens=64,
                                 sampling=Sampling(temperature=0.7, top_p=0.9, seed=1),
                                 samples=4)               # 4 samples of each prompt
    results[0].tokens                                     # [samples][generated ids]

Prompts of different lengths share a batch: they are right-padded into a length bucket, each
row writes its own slots, and a row stops at a stop token (`<|eot_id|>`, `<|end_of_text|>` by
default) or after `max_new_tokens`. Shapes are bucketed (batch and prompt length to powers of
two, the cache to the bucket of prompt + new tokens), so a run compiles one prefill and one
decode step per bucket, never per token; when finished rows leave at most half the batch
bucket, the rest move into the smaller bucket and stop costing work. K samples of one prompt
prefill it once and start from copies of its cache (Llama 3's prefix sharing for rejection
sampling, report §4.2.2). On a mesh (a MeshConfig, checked like training's, or the one the
model's parameters already lie on) the parameters, the cache and the rows are sharded by the
training rules: heads over tensor, rows over data x fsdp; the mesh may span processes (each
runs the same `generate` call and gets every token: llama3_jax/infer/placement.py), and the
tokens are those of one device.
"""

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llama3_jax.infer import kv_cache
from llama3_jax.infer.placement import Placement
from llama3_jax.infer.sampling import sample
from llama3_jax.sharding import MeshConfig, ShardingConfig

# Llama 3's end-of-turn and end-of-text ids (its tokenizer's special tokens).
LLAMA3_STOP_IDS = (128009, 128001)


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 0.0   # 0: greedy
  top_k: int = 0             # 0: no limit
  top_p: float = 1.0         # 1: no limit
  seed: int = 0

  def __post_init__(self):
    if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f"sampling {self}: temperature must be >= 0, top_k >= 0 and top_p in "
                       "(0, 1]")


@dataclasses.dataclass
class Result:
  prompt: list[int]
  tokens: list[list[int]]          # per sample: the generated ids (the stop token included)
  finished: list[bool]             # per sample: stopped by a stop token or on_tokens (not by
                                   # the budget)
  logits: list[np.ndarray] | None = None   # per sample [generated, V] fp32, if asked for


def bucket(n: int, minimum: int = 1) -> int:
  """The power of two at or above n (and at least `minimum`)."""
  return max(minimum, 1 << max(n - 1, 0).bit_length())


class Generator:

  def __init__(self, model, mesh_config: MeshConfig | None = None,
               sharding: ShardingConfig = ShardingConfig(), *, devices=None,
               stop_ids: Sequence[int] | None = None, min_batch: int | None = None):
    self.config = model.config
    self.stop_ids = tuple(LLAMA3_STOP_IDS if stop_ids is None else stop_ids)
    # Where it runs: a mesh of its own (mesh_config), else the mesh the model lies on, if any.
    if mesh_config is not None:
      self.placement = Placement.make(mesh_config, self.config, devices=devices,
                                      sharding=sharding)
    else:
      self.placement = Placement.of(model)
    self.graphdef, state = nnx.split(model)
    self.state = self.placement.put_state(state) if mesh_config is not None else state
    self.mesh, self.rules = self.placement.mesh, self.placement.rules
    self.cache_shardings = None
    take, new_cache = kv_cache.take_rows, kv_cache.init_cache
    if self.mesh is not None:
      # The cache is made on its devices and rows are taken there: no array of it ever passes
      # through one device or the host.
      self.cache_shardings = kv_cache.cache_shardings(self.mesh, self.rules)
      take = jax.jit(take, out_shardings=self.cache_shardings)
      new_cache = jax.jit(new_cache, static_argnums=(0, 1, 2),
                          out_shardings=self.cache_shardings)
    self._take_cache, self._init_cache = take, new_cache
    self.min_batch = max(min_batch or 1, self.placement.row_shards)   # rows split over data x fsdp
    self.decoded_rows = 0   # rows x decode steps computed (padding and live rows alike)
    self._prefill = jax.jit(self._prefill_fn, donate_argnums=1)
    self._decode = jax.jit(self._decode_fn, donate_argnums=1)
    self._sample = jax.jit(sample)
    self._take_logits = jax.jit(lambda logits_bv, rows_b: logits_bv[rows_b])

  def compile_counts(self) -> dict[str, int]:
    """Programs compiled so far: one prefill per (batch, length, cache) bucket, one decode step
    per (batch, cache) bucket."""
    return {"prefill": self._prefill._cache_size(), "decode": self._decode._cache_size()}

  # ---- compiled pieces ---------------------------------------------------------------------

  def _model(self, state):
    return nnx.merge(self.graphdef, state)

  def _prefill_fn(self, state, cache, tokens_bt, lengths_b):
    """Logits after each row's last prompt token [B, V], and the cache holding the prompts."""
    B, T = tokens_bt.shape
    slots_bt = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    segment_bt = (slots_bt < lengths_b[:, None]).astype(jnp.int32)   # padding: segment 0
    logits_b1v, cache = self._model(state)(tokens_bt, segment_bt, slots_bt, slots_bt,
                                           cache=cache, logits_at=(lengths_b - 1)[:, None])
    return logits_b1v[:, 0], cache

  def _decode_fn(self, state, cache, tokens_b, slots_b):
    """Feeds one token per row at its slot: the next logits [B, V] and the cache."""
    tokens_bt, slots_bt = tokens_b[:, None], slots_b[:, None]
    logits_btv, cache = self._model(state)(tokens_bt, jnp.ones_like(tokens_bt), slots_bt,
                                           slots_bt, cache=cache)
    return logits_btv[:, 0], cache

  def _call(self, fn, *args):
    with self.placement.active():
      return fn(*args)

  def _rows(self, x):
    return x if self.mesh is None else self.placement.rows(x)

  def _batch(self, rows: int) -> int:
    """The batch bucket of `rows` rows: a power of two, at least min_batch, that the mesh's
    row shards divide."""
    return self.placement.padded_rows(bucket(rows, self.min_batch))

  def _new_cache(self, batch, max_len):
    return self._init_cache(self.config, batch, max_len)

  # ---- the loop ----------------------------------------------------------------------------

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               sampling: Sampling | Sequence[Sampling] = Sampling(), samples: int = 1,
               first_sample: int = 0, keep_logits: bool = False,
               on_tokens: Callable[[int, list[int]], None] | None = None) -> list[Result]:
    """Generates `samples` continuations of each prompt (token ids). `sampling`: one for all
    prompts or one per prompt. Samples are numbered from `first_sample` (sample j of a seed is
    the same draw however many samples are asked for). `keep_logits`: also return the logits
    each token was chosen from. `on_tokens(row, new_ids)` is called as tokens arrive (row =
    prompt index * samples + sample index), for streaming; if it returns True the row stops
    there (finished, like a stop token)."""
    prompts = [list(map(int, p)) for p in prompts]
    sampling = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
    self._check(prompts, sampling, max_new_tokens, samples)
    P, K = len(prompts), samples
    longest = max(map(len, prompts))
    S = min(bucket(longest + max_new_tokens, 16), self.config.max_seq_len)
    T = min(bucket(longest, 8), S)
    Bp = self._batch(P)
    tokens_bt = np.zeros((Bp, T), np.int32)
    lengths_b = np.ones(Bp, np.int32)
    for i, p in enumerate(prompts):
      tokens_bt[i, :len(p)], lengths_b[i] = p, len(p)
    logits_bv, cache = self._call(self._prefill, self.state, self._new_cache(Bp, S),
                                  self._rows(tokens_bt), self._rows(lengths_b))
    # Decode row r is sample j of prompt i (r = i * K + j): it starts from a copy of prompt i's
    # prefilled cache and logits (the prompt was prefilled once for its K samples).
    rows = [(i, j) for i in range(P) for j in range(K)]
    B = self._batch(len(rows))
    source = np.array([i for i, _ in rows] + [0] * (B - len(rows)), np.int32)
    if B != Bp or K > 1:
      cache, logits_bv = self._take(cache, logits_bv, source)
    host_params = self._row_params(rows, sampling, B, first_sample)
    params = tuple(self._rows(p) for p in host_params)
    slots_b = np.array([len(prompts[i]) for i, _ in rows] + [0] * (B - len(rows)), np.int32)
    out, done = [[] for _ in rows], [False] * len(rows)
    kept = [[] for _ in rows]
    slot_rows = list(range(len(rows))) + [None] * (B - len(rows))   # decode slot -> row
    for step in range(max_new_tokens):
      next_b = self.placement.fetch(self._sample(
          logits_bv, *params[:2], self._rows(np.full(B, step, np.int32)), *params[2:]))
      live = []
      host_logits_bv = (self.placement.fetch(logits_bv).astype(np.float32) if keep_logits
                        else None)
      for slot, row in enumerate(slot_rows):
        if row is None:
          continue
        token = int(next_b[slot])
        out[row].append(token)
        if keep_logits:
          kept[row].append(host_logits_bv[slot])
        # on_tokens may stop the row (True): a stop string seen in its decoded text (eval).
        stopped = on_tokens(row, [token]) is True if on_tokens else False
        if token in self.stop_ids or stopped:
          done[row] = True
        elif len(out[row]) < max_new_tokens:
          live.append(slot)
      if not live:
        break
      smaller = self._batch(len(live))
      if smaller < B:   # finished rows leave; the live ones move into the smaller bucket
        keep = np.array(live + [live[0]] * (smaller - len(live)), np.int32)
        cache, _ = self._take(cache, None, keep)
        next_b, slots_b = next_b[keep], slots_b[keep]
        host_params = tuple(p[keep] for p in host_params)
        params = tuple(self._rows(p) for p in host_params)
        slot_rows = [slot_rows[s] for s in live] + [None] * (smaller - len(live))
        B = smaller
      else:
        slot_rows = [row if slot in live else None for slot, row in enumerate(slot_rows)]
      logits_bv, cache = self._call(self._decode, self.state, cache,
                                    self._rows(next_b.astype(np.int32)), self._rows(slots_b))
      self.decoded_rows += B
      slots_b = slots_b + 1
    return [Result(prompts[i], [out[i * K + j] for j in range(K)],
                   [done[i * K + j] for j in range(K)],
                   [np.stack(kept[i * K + j]) for j in range(K)] if keep_logits else None)
            for i in range(P)]

  def _take(self, cache, logits_bv, rows_b):
    """The cache (and logits, if given) of rows `rows_b`, in that order, on their devices."""
    rows_b = self.placement.replicated(np.asarray(rows_b, np.int32))
    cache = self._take_cache(cache, rows_b)
    if logits_bv is not None:
      with self.placement.active():
        logits_bv = self._take_logits(logits_bv, rows_b)
    return cache, logits_bv

  def _row_params(self, rows, sampling, B, first_sample):
    """Per decode row (numpy): seed, sample number, temperature, top-k, top-p (padding rows:
    greedy)."""
    pad = B - len(rows)
    seed = [sampling[i].seed for i, _ in rows] + [0] * pad
    number = [first_sample + j for _, j in rows] + [0] * pad
    temperature = [sampling[i].temperature for i, _ in rows] + [0.0] * pad
    top_k = [sampling[i].top_k for i, _ in rows] + [0] * pad
    top_p = [sampling[i].top_p for i, _ in rows] + [1.0] * pad
    return tuple(np.asarray(x, dtype) for x, dtype in (
        (seed, np.uint32), (number, np.int32), (temperature, np.float32), (top_k, np.int32),
        (top_p, np.float32)))

  def _check(self, prompts, sampling, max_new_tokens, samples):
    if not prompts:
      raise ValueError("no prompts given; pass at least one prompt of token ids")
    if len(sampling) != len(prompts):
      raise ValueError(f"{len(sampling)} sampling settings for {len(prompts)} prompts; give one "
                       "for all or one per prompt")
    if max_new_tokens < 1 or samples < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} and samples={samples} must be >= 1")
    for i, p in enumerate(prompts):
      if not p:
        raise ValueError(f"prompt {i} is empty; a prompt needs at least one token (e.g. "
                         "<|begin_of_text|>)")
      if len(p) + max_new_tokens > self.config.max_seq_len:
        raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens="
                         f"{max_new_tokens} that exceeds the model's context of "
                         f"{self.config.max_seq_len} tokens; shorten the prompt or lower "
                         "max_new_tokens")
      bad = [t for t in p if not 0 <= t < self.config.vocab_size]
      if bad:
        raise ValueError(f"prompt {i} holds token ids {bad[:5]} outside the model's vocabulary "
                         f"of {self.config.vocab_size}; was it encoded with another tokenizer?")
