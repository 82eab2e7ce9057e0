"""Everything a run derives from its config before any device work, checked with clear errors.

    plan = make_plan(run_config(cfg), n_devices=jax.device_count())

The model (its size plus overrides), the mesh, the sharding with "auto" decided, the stages,
the token count before every step of the schedule's horizon, and the warm-up and anneal in
tokens. A ValueError names the problem and the fix; a warm-up and anneal given in tokens that
do not fit a short run (a first smoke run of a few steps) are scaled down with a warning.
"""

import dataclasses
import logging

from llama3_jax.errors import UserError
from llama3_jax.model import ModelConfig
from llama3_jax.optim.schedules import Stage, tokens_after, validate_stages
from llama3_jax.parallel import pipeline
from llama3_jax.data.conversations.prepared import is_conversation_data
from llama3_jax.sharding import MeshConfig, ShardingConfig, validate
from llama3_jax.train.config import RunConfig

log = logging.getLogger(__name__)

# A warm-up plus anneal in tokens that overflow the run is scaled to this share of it.
SHORT_RUN_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class Plan:
  model: ModelConfig
  mesh: MeshConfig
  sharding: ShardingConfig        # vocab_over_fsdp decided
  stages: tuple[Stage, ...]
  micro_batches: tuple[int, ...]  # per stage: its own, or train.micro_batches
  steps: int
  tokens: list[int]               # tokens seen before each step of the schedule's horizon
  warmup_tokens: int
  anneal_tokens: int

  def micro_batches_for(self, rows: int, seq_len: int) -> int:
    """The micro-batches of the stage whose batch is `rows` x `seq_len` (the step is traced
    once per batch shape, so it asks the shape)."""
    for stage, count in zip(self.stages, self.micro_batches):
      if (stage.batch_size, stage.seq_len) == (rows, seq_len):
        return count
    return self.micro_batches[-1]   # a batch of no stage (an evaluation): the last stage's

  @property
  def anneal_from(self) -> int:
    """Tokens at which the final anneal (and checkpoint averaging) starts."""
    return self.tokens[-1] - self.anneal_tokens


def make_plan(run: RunConfig, n_devices: int, n_processes: int = 1,
              init_model: ModelConfig | None = None) -> Plan:
  """Validates the config for `n_devices` devices over `n_processes` processes; `init_model`:
  the model of `run.init.path` (what model.size="init" means)."""
  model, train, data = run.model.resolve(init_model), run.train, run.data
  sizes = run.mesh.sizes(n_devices)
  stages = train.stages
  micro_batches = tuple(s.micro_batches or train.micro_batches for s in stages)
  _check_stages(stages, model, sizes, micro_batches)
  validate_stages(list(stages), batch_shards=sizes["data"] * sizes["fsdp"])
  if not data.synthetic and not (data.path and is_conversation_data(data.path)):
    for stage in stages:
      if stage.batch_size % data.streams:
        raise ValueError(f"a stage's batch of {stage.batch_size} rows is not divisible by "
                         f"data.streams={data.streams}; make streams a divisor of every "
                         "stage's rows")
    if data.streams % n_processes:
      raise ValueError(f"data.streams={data.streams} is not divisible by the {n_processes} "
                       "processes; each process must own whole streams")
  # Rows over stage too outside the pipeline where every stage's batch allows it.
  rows_over_stage = run.sharding.rows_over_stage and all(
      stage.batch_size % (sizes["data"] * sizes["fsdp"] * sizes["stage"]) == 0
      for stage in stages)
  for stage in stages:
    validate(run.mesh, model, n_devices=n_devices, global_batch=stage.batch_size,
             seq_len=stage.seq_len, rows_over_stage=rows_over_stage)
  if sizes["stage"] > 1:   # any layer count, but every layer chunk of the pipeline needs a layer
    pipeline.layout(model.n_layers, sizes["stage"], run.sharding.pipeline_repeats)
  if run.eval.every_steps and run.eval.every_steps % run.log.every_steps:
    raise ValueError(f"eval.every_steps={run.eval.every_steps} is not a multiple of "
                     f"log.every_steps={run.log.every_steps}; the results go into a metrics "
                     "row, so make it one")
  horizon = train.schedule_steps or train.steps
  if horizon < train.steps:
    raise ValueError(f"train.schedule_steps={horizon} is shorter than train.steps="
                     f"{train.steps}; make it at least as long")
  tokens = tokens_after(list(stages), horizon)
  warmup, anneal = warmup_and_anneal(train, tokens[-1], horizon)
  sharding = dataclasses.replace(
      run.sharding.resolve(model.vocab_size, max(s.batch_tokens for s in stages), sizes),
      rows_over_stage=rows_over_stage)
  split = sizes["tensor"] * sizes["fsdp"]
  if sharding.vocab_over_fsdp and model.vocab_size % split:
    raise UserError(f"sharding.vocab_over_fsdp splits the vocabulary over tensor*fsdp={split}, "
                    f"which does not divide model.vocab_size={model.vocab_size}",
                    f"make vocab_size a multiple of {split}, or set "
                    "--config.sharding.vocab_over_fsdp=False")
  return Plan(model, run.mesh, sharding, stages, micro_batches, train.steps, tokens, warmup,
              anneal)


def _check_stages(stages, model: ModelConfig, sizes: dict, counts: tuple[int, ...]) -> None:
  """What every stage needs of the model and of its micro-batches, named by stage and field."""
  shards = sizes["data"] * sizes["fsdp"]
  shapes = {}
  for i, (stage, micro_batches) in enumerate(zip(stages, counts)):
    other = shapes.setdefault((stage.batch_size, stage.seq_len), (i, micro_batches))
    if other[1] != micro_batches:
      raise UserError(f"train.stages[{other[0]}] and [{i}] have the same batch shape "
                      f"({stage.batch_size} x {stage.seq_len}) but {other[1]} and "
                      f"{micro_batches} micro-batches", "give them the same micro_batches "
                      "(the step is compiled once per batch shape)")
    if stage.seq_len > model.max_seq_len:
      raise UserError(f"train.stages[{i}].seq_len={stage.seq_len} exceeds model.max_seq_len="
                      f"{model.max_seq_len}", "raise model.max_seq_len (the context the model "
                      "is built for) or shorten the stage's sequences")
    rows = stage.batch_tokens // max(stage.seq_len, 1)
    if micro_batches > 1 and rows % (micro_batches * shards):
      raise UserError(
          f"train.stages[{i}] has {rows} rows per batch, which do not split into "
          f"train.micro_batches={micro_batches} micro-batches of a multiple of data*fsdp="
          f"{shards} rows", f"make the stage's rows a multiple of {micro_batches * shards} "
          f"(batch_tokens a multiple of {micro_batches * shards * stage.seq_len}), or choose "
          f"micro_batches among {[d for d in range(1, rows + 1) if rows % (d * shards) == 0]}")


def warmup_and_anneal(train, total_tokens: int, horizon: int) -> tuple[int, int]:
  """The warm-up and the final anneal in tokens, for a schedule of `total_tokens`."""
  def tokens(part):
    fraction = getattr(train, f"{part}_fraction")
    if fraction is not None:
      return round(fraction * total_tokens)
    return getattr(train, f"{part}_tokens") or 0

  warmup, anneal = tokens("warmup"), tokens("anneal")
  if warmup + anneal <= total_tokens:
    return warmup, anneal
  if train.warmup_fraction is not None or train.anneal_fraction is not None:
    raise ValueError(f"the warm-up ({warmup} tokens) and the anneal ({anneal} tokens) together "
                     f"exceed the schedule's {total_tokens} tokens; make train.warmup_* and "
                     "train.anneal_* add up to less than the whole schedule")
  scale = SHORT_RUN_SHARE * total_tokens / (warmup + anneal)
  scaled = int(warmup * scale), int(anneal * scale)
  log.warning("train.warmup_tokens=%d + train.anneal_tokens=%d exceed the %d tokens of this "
              "%d-step schedule; scaled to %d and %d (the same ratio, %d%% of the run). Set "
              "train.warmup_fraction / train.anneal_fraction, smaller token counts, or "
              "train.schedule_steps to choose.", warmup, anneal, total_tokens, horizon,
              *scaled, round(100 * SHORT_RUN_SHARE))
  return scaled
