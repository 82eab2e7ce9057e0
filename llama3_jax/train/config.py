"""The launcher's config schema: every field of a run, each with its one default.

    cfg = default_config()                 # an ml_collections.ConfigDict made from RunConfig()
    cfg.train.steps = 100                  # configs and --config.<path>=<value> override fields
    run = run_config(cfg)                  # typed and checked: RunConfig, ModelConfig, Stage...

Config files (experiments/configs/*.py) start from `default_config()` and change what differs;
no default is written anywhere else. The model is picked by name from the size table
(`model.size="llama3-8b"`) and any of its fields overridden (`model.n_layers=4`); a field left
unset keeps the size's value. Stages are dicts with named fields. A field that is None by
default ("unset": the default is derived, e.g. the schedule's horizon is the run's steps) is an
ml_collections placeholder, so the command line can still set it.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping

import ml_collections
from ml_collections import config_dict

from llama3_jax.errors import UserError
from llama3_jax.model import SIZES, ModelConfig, RopeScaling
from llama3_jax.objectives.dpo import DPOLoss
from llama3_jax.optim.schedules import Stage
from llama3_jax.runtime.faults import FaultsConfig
from llama3_jax.runtime.guard import GuardConfig
from llama3_jax.schema import from_dict
from llama3_jax.sharding import MeshConfig, ShardingConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The optimisation: steps, stages (the batch / sequence ramp), the schedule, AdamW."""
  steps: int = 60
  schedule_steps: int | None = None     # the schedule's horizon; unset = steps (set it longer
  #                                       to stop early on the way to a longer run)
  seed: int = 0
  micro_batches: int = 1                # with mesh.stage > 1, the pipeline's micro-batches
  # The batch/sequence ramp; no mixture = Llama 3's general 50, math 25, code 17, multilingual 8.
  stages: tuple[Stage, ...] = (Stage(until_tokens=16 * 4096, batch_tokens=16 * 128, seq_len=128),
                               Stage(until_tokens=None, batch_tokens=16 * 256, seq_len=256))
  peak_lr: float = 3e-3
  # Warm-up and final anneal: in tokens, or as fractions of the schedule's horizon (set one of
  # each pair). Token counts that do not fit a short run are scaled down with a warning.
  warmup_tokens: int | None = 8 * 2048
  warmup_fraction: float | None = None
  anneal_tokens: int | None = 10 * 4096
  anneal_fraction: float | None = None
  floor_ratio: float = 0.01             # cosine decays to this fraction of the peak
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  clip_norm: float = 1.0                # 0 = no clipping

  def __post_init__(self):
    problems = []
    if self.steps <= 0:
      problems.append(f"train.steps={self.steps}; it must be a positive number of steps")
    if self.micro_batches <= 0:
      problems.append(f"train.micro_batches={self.micro_batches} must be positive")
    if not self.peak_lr > 0:
      problems.append(f"train.peak_lr={self.peak_lr} must be positive")
    if not 0 <= self.floor_ratio <= 1:
      problems.append(f"train.floor_ratio={self.floor_ratio} must be in [0, 1]")
    for name in ("weight_decay", "clip_norm"):
      if getattr(self, name) < 0:
        problems.append(f"train.{name}={getattr(self, name)} must be >= 0")
    for name in ("b1", "b2"):
      if not 0 <= getattr(self, name) < 1:
        problems.append(f"train.{name}={getattr(self, name)} must be in [0, 1)")
    for part in ("warmup", "anneal"):
      tokens, fraction = getattr(self, f"{part}_tokens"), getattr(self, f"{part}_fraction")
      if tokens is not None and fraction is not None:
        problems.append(f"train.{part}_tokens={tokens} and train.{part}_fraction={fraction} "
                        "are both set; set one of them")
      if tokens is not None and tokens < 0 or fraction is not None and not 0 <= fraction < 1:
        problems.append(f"train.{part}_tokens must be >= 0 and train.{part}_fraction in [0, 1)")
    if problems:
      raise ValueError("; ".join(problems))


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where batches come from (llama3_jax/data/batches.py)."""
  path: str | None = None    # a directory made by experiments.prepare_data; unset = embedded
  # Fixed slices of the batch's rows, each read independently (llama3_jax/data/loader.py); it
  # must divide every stage's rows and be a multiple of the number of JAX processes.
  streams: int = 8
  synthetic: bool = False    # the arithmetic-sequence source (no files)


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """Where a new run's parameters come from (fine-tuning): a training workdir, one of its
  checkpoint steps, or a Hugging Face directory; unset = random. With model.size="init" the
  model is the one saved there. A resumed run reads its own checkpoints, not this."""
  path: str | None = None
  averaged: bool = False     # a workdir's anneal average (WORKDIR/averaged_params)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Evaluation during training (llama3_jax/eval/during_training.py); 0 = off."""
  every_steps: int = 0          # a multiple of log.every_steps: results go into that row
  tasks: str = "heldout,arith"  # heldout (loss per source), shipped tasks (arith_gen too), files
  examples: int = 100           # the first N examples of each task

  def __post_init__(self):
    if self.every_steps < 0 or self.examples <= 0:
      raise ValueError(f"eval.every_steps={self.every_steps} must be >= 0 and eval.examples="
                       f"{self.examples} > 0")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 20
  max_to_keep: int = 3
  keep_period: int | None = None   # also keep every keep_period-th step; unset = none
  async_save: bool = True
  # Every checkpoint of the workdir unreadable: stop (exit 2) rather than silently start a run
  # that existed over from step 0, unless this says so.
  restart_if_unreadable: bool = False

  def __post_init__(self):
    # Values that keep no checkpoint (Orbax reads max_to_keep 0 as "delete each one", -1 as
    # nothing sensible) would let a rerun silently start over from step 0.
    if self.every_steps < 1:
      raise UserError(f"checkpoint.every_steps={self.every_steps} must be >= 1",
                      "give the steps between checkpoints (the last step is always saved)")
    if self.max_to_keep < 1:
      raise UserError(f"checkpoint.max_to_keep={self.max_to_keep} keeps no checkpoint",
                      "keep at least 1 (the newest)")
    if self.keep_period is not None and self.keep_period < 1:
      raise UserError(f"checkpoint.keep_period={self.keep_period} must be >= 1",
                      "give a period in steps, or leave it unset (None) to keep none extra")


@dataclasses.dataclass(frozen=True)
class LogConfig:
  every_steps: int = 5

  def __post_init__(self):
    if self.every_steps < 1:
      raise UserError(f"log.every_steps={self.every_steps} must be >= 1",
                      "give the steps between metrics rows")


@dataclasses.dataclass(frozen=True)
class MfuConfig:
  peak_flops: float | None = None   # per-device peak FLOP/s; unset = data sheet or measured


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
  steps: str = ""                   # "a,b": write a JAX profiler trace of steps a..b


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """The process: fake CPU devices, the hang watchdog, the compilation cache."""
  # Fake CPU devices per process (ignored on GPU/TPU; launch.local's --devices-per-process wins).
  cpu_devices: int = 8
  # No step done in watchdog_s seconds (NCCL's default collective timeout is 10 minutes) ->
  # stack dump, exit 75; steps that compile get watchdog_compile_s. 0 turns it off.
  watchdog_s: float = 600.0
  watchdog_compile_s: float = 1800.0
  # JAX's persistent compilation cache in ~/.cache/llama3_jax/xla (or $LLAMA3_JAX_CACHE/xla;
  # $JAX_COMPILATION_CACHE_DIR wins), so that relaunches skip compiling.
  compilation_cache: bool = True


@dataclasses.dataclass(frozen=True)
class ModelChoice:
  """A size from the table (llama3_jax/model/config.py) and the fields that differ from it."""
  size: str = "debug"
  overrides: tuple[tuple[str, typing.Any], ...] = ()

  def resolve(self, init: ModelConfig | None = None) -> ModelConfig:
    """The model; `init`: the model of init.path, which size "init" stands for."""
    if self.size == "init":
      if init is None:
        raise ValueError('model.size="init" takes the model of init.path, which is unset; '
                         "set --config.init.path=WORKDIR or choose a size")
      base = init
    elif self.size not in SIZES:
      raise ValueError(f"model.size={self.size!r} is not a known size; choose one of "
                       f"{sorted(SIZES)} or \"init\" (the model of init.path)")
    else:
      base = SIZES[self.size]
    changes = dict(self.overrides)
    if "rope_scaling" in changes:
      changes["rope_scaling"] = RopeScaling(**{
          **dataclasses.asdict(base.rope_scaling or RopeScaling()), **changes["rope_scaling"]})
    if "remat_names" in changes:
      changes["remat_names"] = tuple(changes["remat_names"])
    return base.replace(**changes)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole run; `default_config()` is this with every default."""
  model: ModelChoice = ModelChoice()
  mesh: MeshConfig = MeshConfig()
  sharding: ShardingConfig = ShardingConfig()
  train: TrainConfig = TrainConfig()
  data: DataConfig = DataConfig()
  init: InitConfig = InitConfig()
  dpo: DPOLoss = DPOLoss()            # DPO's settings: llama3_jax/objectives/dpo.py
  eval: EvalConfig = EvalConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  log: LogConfig = LogConfig()
  mfu: MfuConfig = MfuConfig()
  profile: ProfileConfig = ProfileConfig()
  runtime: RuntimeConfig = RuntimeConfig()
  resilience: GuardConfig = GuardConfig()   # bad steps, rollbacks, spikes, stragglers
  faults: FaultsConfig = FaultsConfig()     # injected failures for tests and drills

  def with_paths(self, *, init=None, data=None) -> "RunConfig":
    """This run starting from `init` and/or reading `data` (init.path, data.path) instead."""
    run = self
    if init is not None:
      run = dataclasses.replace(run, init=dataclasses.replace(run.init, path=str(init)))
    if data is not None:
      run = dataclasses.replace(run, data=dataclasses.replace(run.data, path=str(data)))
    return run


# ---- RunConfig -> ConfigDict ----------------------------------------------------------------

def apply_args(c: ml_collections.ConfigDict, arg: str | None, known: dict[str, str]):
  """A config file's `:key=value,...` argument (`--config file.py:steps=20`) applied to `c`:
  `known` maps each key to the dotted field it sets; a value takes the field's type."""
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in known:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(known)}")
    *parents, name = known[key].split(".")
    node = c
    for parent in parents:
      node = node[parent]
    node[name] = type(node[name])(value)
  return c


def default_config() -> ml_collections.ConfigDict:
  """Every field of a run with its default, as a ConfigDict for config files to override."""
  return to_config_dict(RunConfig())


def to_config_dict(run: RunConfig) -> ml_collections.ConfigDict:
  sections = {}
  for section in dataclasses.fields(run):
    value = getattr(run, section.name)
    sections[section.name] = (_model_section(value) if section.name == "model"
                              else _section(value))
  return ml_collections.ConfigDict(sections)


def _section(obj) -> dict:
  hints = typing.get_type_hints(type(obj))
  out = {}
  for field in dataclasses.fields(obj):
    value = getattr(obj, field.name)
    if field.name == "stages":
      value = tuple(_stage_dict(stage) for stage in value)
    out[field.name] = config_dict.placeholder(_base_type(hints[field.name])) if value is None \
        else value
  return out


def _model_section(choice: ModelChoice) -> dict:
  """`size` plus one unset field per ModelConfig field (RoPE scaling's fields nested)."""
  hints = typing.get_type_hints(ModelConfig)
  out = {"size": choice.size}
  for field in dataclasses.fields(ModelConfig):
    if field.name == "rope_scaling":
      out[field.name] = {f.name: config_dict.placeholder(typing.get_type_hints(RopeScaling)[
          f.name]) for f in dataclasses.fields(RopeScaling)}
    else:
      out[field.name] = config_dict.placeholder(_base_type(hints[field.name]))
  for name, value in choice.overrides:
    if name == "rope_scaling":
      out[name].update(value)
    else:
      out[name] = value
  return out


def _stage_dict(stage: Stage) -> dict:
  out = dataclasses.asdict(stage)
  out["mixture"] = dict(stage.mixture) if stage.mixture else None
  return out


def _base_type(hint):
  """int for `int | None`, tuple for `tuple[str, ...]`."""
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
  return typing.get_origin(hint) or hint


# ---- ConfigDict -> RunConfig ----------------------------------------------------------------

def run_config(cfg) -> RunConfig:
  """The typed run of a ConfigDict (or dict); ValueError naming any unknown or bad field."""
  cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  known = {f.name: f for f in dataclasses.fields(RunConfig)}
  unknown = sorted(set(cfg) - set(known))
  if unknown:
    raise ValueError(f"unknown config section(s) {unknown}; known: {sorted(known)}")
  sections = {}
  for name, section in cfg.items():
    if name == "model":
      sections[name] = _model_choice(section)
      continue
    fields = dict(section)
    if name == "train" and "stages" in fields:
      fields["stages"] = tuple(_stage(i, s) for i, s in enumerate(fields["stages"]))
    if name == "sharding" and "vocab_over_fsdp" in fields:
      fields["vocab_over_fsdp"] = _auto_or_bool(fields["vocab_over_fsdp"])
    sections[name] = from_dict(known[name].type, fields, name)
  return RunConfig(**sections)


def _model_choice(section) -> ModelChoice:
  section = dict(section)
  size = section.pop("size", ModelChoice.size)
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(section) - known)
  if unknown:
    raise ValueError(f"unknown model field(s) {unknown}; known: size, {', '.join(sorted(known))}")
  overrides = []
  for name, value in section.items():
    if name == "rope_scaling" and isinstance(value, dict):
      value = {k: v for k, v in value.items() if v is not None}
      if value:
        overrides.append((name, value))
    elif value is not None:
      overrides.append((name, value))
  return ModelChoice(size, tuple(overrides))


def _stage(index: int, stage) -> Stage:
  if isinstance(stage, (tuple, list)):
    raise ValueError(f"train.stages[{index}]={tuple(stage)} is positional; write it as "
                     "dict(until_tokens=..., batch_tokens=..., seq_len=..., mixture=None)")
  if not isinstance(stage, Mapping):
    raise UserError(f"train.stages[{index}]={stage!r} is not a stage",
                    "write each stage as {'until_tokens': ..., 'batch_tokens': ..., "
                    "'seq_len': ..., 'mixture': None} (a dict literal, in a config file or "
                    "--config.train.stages)")
  fields = dict(stage)
  if fields.get("mixture"):
    fields["mixture"] = tuple((str(k), float(v)) for k, v in dict(fields["mixture"]).items())
  return from_dict(Stage, fields, f"train.stages[{index}]")


def _auto_or_bool(value):
  choice = {"auto": "auto", "true": True, "false": False}.get(str(value).lower())
  if choice is None:
    raise ValueError(f"sharding.vocab_over_fsdp={value!r}; use auto, True or False")
  return choice
