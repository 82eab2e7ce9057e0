"""The Llama 3 learning-rate schedule and training stages, both measured in tokens.

Report §3.4: linear warm-up, cosine decay to 1/100 of the peak, and a final linear anneal to 0
over the last tokens (40M for 405B). Stages ramp the batch and the sequence length:
4M tokens of 4,096-token sequences, 8M of 8,192 after 252M tokens, 16M after 2.87T. Because
the schedule is a function of tokens seen, it stays right when a stage changes the batch size.
"""

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class Stage:
  """Train with this batch until `until_tokens` have been seen (None: until the end)."""
  until_tokens: int | None
  batch_tokens: int
  seq_len: int
  mixture: tuple[tuple[str, float], ...] | None = None   # data source weights, if any
  # This stage's micro-batches (None: train.micro_batches): a ramp's small early batches may
  # allow fewer than its last (the 405B's 1,024-row stages 8 per FSDP replica, 2,048 rows 16).
  micro_batches: int | None = None

  @property
  def batch_size(self) -> int:
    return self.batch_tokens // self.seq_len


def validate_stages(stages: list[Stage], batch_shards: int = 1) -> None:
  if not stages:
    raise ValueError("train.stages is empty; give at least one stage")
  previous = 0
  for i, s in enumerate(stages):
    where = f"stage {i} {s}"
    if s.seq_len <= 0 or s.batch_tokens <= 0:
      raise ValueError(f"{where}: batch_tokens and seq_len must be positive")
    if s.batch_tokens % s.seq_len:
      raise ValueError(f"{where}: batch_tokens={s.batch_tokens} is not a multiple of "
                       f"seq_len={s.seq_len}")
    if s.micro_batches is not None and s.micro_batches < 1:
      raise ValueError(f"{where}: micro_batches={s.micro_batches} must be positive")
    if s.batch_size % batch_shards:
      raise ValueError(f"{where}: {s.batch_size} sequences per batch do not split over "
                       f"data*fsdp={batch_shards}; use a multiple of {batch_shards}")
    if s.until_tokens is not None:
      if s.until_tokens <= previous:
        raise ValueError(f"{where}: until_tokens must increase from stage to stage")
      previous = s.until_tokens
    elif i != len(stages) - 1:
      raise ValueError(f"{where}: only the last stage may run until the end (until_tokens None)")


def stage_at(stages: list[Stage], tokens: int) -> int:
  """Index of the stage in force once `tokens` have been seen."""
  for i, s in enumerate(stages):
    if s.until_tokens is None or tokens < s.until_tokens:
      return i
  return len(stages) - 1


def tokens_after(stages: list[Stage], steps: int) -> list[int]:
  """Tokens seen before each step 0..steps (the list has steps + 1 entries)."""
  seen = [0]
  for _ in range(steps):
    seen.append(seen[-1] + stages[stage_at(stages, seen[-1])].batch_tokens)
  return seen


def lr_schedule(peak_lr: float, warmup_tokens: int, total_tokens: int, anneal_tokens: int = 0,
                floor_ratio: float = 0.01) -> optax.Schedule:
  """Learning rate as a function of tokens seen.

  Linear warm-up to `peak_lr` over `warmup_tokens`; cosine decay to `floor_ratio * peak_lr` at
  `total_tokens - anneal_tokens`; then linearly to 0 at `total_tokens`.
  """
  if not 0 <= warmup_tokens <= total_tokens - anneal_tokens:
    raise ValueError(f"warmup_tokens={warmup_tokens} and anneal_tokens={anneal_tokens} do not "
                     f"fit in total_tokens={total_tokens}")
  floor = peak_lr * floor_ratio
  # Token counts pass 2**31 (15.6T tokens): optax sees them as floats, never as int32.
  decay_tokens = float(max(total_tokens - anneal_tokens - warmup_tokens, 1))
  schedules = [optax.linear_schedule(0.0, peak_lr, float(max(warmup_tokens, 1))),
               optax.cosine_decay_schedule(peak_lr, decay_tokens, alpha=floor_ratio),
               optax.linear_schedule(floor, 0.0, float(max(anneal_tokens, 1)))]
  # Compiled once: run op by op, its first call compiles every jnp op in it (~1 s on CPU).
  schedule = jax.jit(optax.join_schedules(
      schedules, [float(warmup_tokens), float(total_tokens - anneal_tokens)]))
  return lambda tokens: schedule(float(tokens))
