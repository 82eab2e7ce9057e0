"""The pre-training loop: mesh, state (restored or new), stages, steps, metrics, checkpoints.

Run through `python -m experiments.pretrain`; `train(config, workdir)` is the library entry.
"""

import dataclasses
import json
import logging
import pathlib
import signal
import sys
import time

import jax
import numpy as np
from flax import nnx

from llama3_jax.checkpoint.averaging import polyak_update
from llama3_jax.checkpoint.manager import Checkpointer, abstract_like
from llama3_jax.data import corpus
from llama3_jax.data.loader import Loader, process_rows, to_global
from llama3_jax.data.synthetic import synthetic_batch
from llama3_jax.model import ModelConfig, RopeScaling, Transformer
from llama3_jax.optim.optimizer import build_optimizer
from llama3_jax.optim.schedules import (Stage, lr_schedule, stage_at, tokens_after,
                                        validate_stages)
from llama3_jax.sharding import (MeshConfig, ShardingConfig, make_mesh, make_rules,
                                 state_shardings, validate)
from llama3_jax.train import metrics as metrics_lib
from llama3_jax.train.state import TrainState
from llama3_jax.train.step import make_step_fns

log = logging.getLogger("llama3_jax")


def model_config_from(cfg) -> ModelConfig:
  fields = dict(cfg.model)
  if fields.get("rope_scaling"):
    fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
  fields["remat_names"] = tuple(fields.get("remat_names", ()))
  return ModelConfig(**fields)


@dataclasses.dataclass
class Plan:
  """Everything derived from the config before any device work."""
  model: ModelConfig
  mesh: MeshConfig
  sharding: ShardingConfig
  stages: list[Stage]
  steps: int
  tokens: list[int]       # tokens seen before each step of the schedule's horizon
  anneal_from: int        # tokens at which the final anneal (and checkpoint averaging) starts


def make_plan(cfg) -> Plan:
  """Validates the config; raises ValueError naming the problem and the fix."""
  if cfg.train.steps <= 0:
    raise ValueError(f"train.steps={cfg.train.steps}; it must be a positive number of steps")
  if cfg.train.micro_batches <= 0:
    raise ValueError(f"train.micro_batches={cfg.train.micro_batches} must be positive")
  model = model_config_from(cfg)
  mesh = MeshConfig(**cfg.mesh)
  stages = [Stage(*stage) for stage in cfg.train.stages]
  sizes = mesh.sizes(jax.device_count())
  shards = sizes["data"] * sizes["fsdp"]
  validate_stages(stages, batch_shards=shards * cfg.train.micro_batches)
  if not cfg.data.synthetic:
    for stage in stages:
      if stage.batch_size % cfg.data.streams:
        raise ValueError(f"a stage's batch of {stage.batch_size} rows is not divisible by "
                         f"data.streams={cfg.data.streams}; make streams a divisor of every "
                         "stage's rows")
    if cfg.data.streams % jax.process_count():
      raise ValueError(f"data.streams={cfg.data.streams} is not divisible by the "
                       f"{jax.process_count()} processes; each process must own whole streams")
  for stage in stages:
    validate(mesh, model, n_devices=jax.device_count(), global_batch=stage.batch_size,
             seq_len=stage.seq_len)
  # The schedule's horizon: by default this run's steps; set train.schedule_steps to stop early
  # on the way to a longer run (its schedule unchanged).
  horizon = cfg.train.get("schedule_steps") or cfg.train.steps
  if horizon < cfg.train.steps:
    raise ValueError(f"train.schedule_steps={horizon} is shorter than train.steps="
                     f"{cfg.train.steps}; make it at least as long")
  tokens = tokens_after(stages, horizon)
  anneal_from = tokens[-1] - cfg.train.anneal_tokens
  return Plan(model, mesh, ShardingConfig(**cfg.sharding), stages, cfg.train.steps, tokens,
              anneal_from)


class _StopRequest:
  """SIGTERM / SIGINT ask the loop to checkpoint and exit cleanly at the next step boundary."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train(cfg, workdir) -> dict:
  """Runs (or resumes) the configured pre-training; returns a summary dict."""
  workdir = pathlib.Path(workdir).resolve()   # Orbax needs absolute paths
  workdir.mkdir(parents=True, exist_ok=True)
  plan = make_plan(cfg)
  mesh = make_mesh(plan.mesh)
  rules = make_rules(plan.model, dict(mesh.shape), plan.sharding)
  tx = build_optimizer(weight_decay=cfg.train.weight_decay, b1=cfg.train.b1, b2=cfg.train.b2,
                       clip_norm=cfg.train.clip_norm)
  schedule = lr_schedule(cfg.train.peak_lr, cfg.train.warmup_tokens, plan.tokens[-1],
                         cfg.train.anneal_tokens, cfg.train.floor_ratio)

  def build():
    return TrainState(Transformer(plan.model, rngs=nnx.Rngs(cfg.train.seed)), tx)

  graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
  shardings = state_shardings(abstract_state, mesh, rules)
  param_shardings = shardings["model"]
  checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.checkpoint.max_to_keep,
                              keep_period=cfg.checkpoint.keep_period or None,
                              async_save=cfg.checkpoint.async_save)
  config_json = json.loads(cfg.to_json_best_effort())
  loader = None
  if not cfg.data.synthetic:
    data_dir = cfg.data.path or corpus.embedded_corpus()
    loader = Loader(data_dir, seed=cfg.train.seed, streams=cfg.data.streams,
                    vocab_size=plan.model.vocab_size)
  restored = checkpointer.restore_latest(
      abstract_like(abstract_state, shardings),
      abstract_like(abstract_state["model"], param_shardings),
      data_streams=range(cfg.data.streams) if loader else ())
  if restored is None:
    start, average, averaged = 0, None, 0
    state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
  else:
    start, state, meta, average, data_state = restored
    if loader:
      loader.set_state(data_state or {}, plan.stages)
    averaged = meta.get("averaged", 0)
    if meta["config"]["model"] != config_json["model"]:
      raise ValueError(f"{workdir} holds a run of another model ({meta['config']['model']}); "
                       "use a new --workdir or the same model config")
    log.info("resumed from step %d (%d tokens)", start, meta["tokens"])
  if start >= plan.steps:
    print(f"run complete: {workdir} already has step {start} of {plan.steps}")
    checkpointer.close()
    return {"steps": start, "complete": True}

  fns = make_step_fns(graphdef, shardings, mesh, rules, plan.sharding, cfg.train.micro_batches)
  peak, peak_source = metrics_lib.peak_flops(cfg.mfu.peak_flops)
  writer = metrics_lib.MetricsWriter(workdir, start) if jax.process_index() == 0 else None
  profile = [int(s) for s in str(cfg.profile.steps).split(",") if s.strip()]
  progress = _Progress(plan.steps, start)
  last_log_time, last_log_step, stopped = time.perf_counter(), start, None
  run_start = time.perf_counter()

  with _StopRequest() as stop:
    for step in range(start, plan.steps):
      if profile and step == profile[0]:
        jax.profiler.start_trace(str(workdir / "profile"))
      tokens = plan.tokens[step]
      stage_index = stage_at(plan.stages, tokens)
      stage = plan.stages[stage_index]
      if loader:
        rows = process_rows(fns.batch_sharding, stage.batch_size, stage.seq_len)
        batch = loader.next_batch(stage_index, stage, rows)
        batch = to_global(batch, fns.batch_sharding, stage.batch_size)
      else:
        batch = synthetic_batch(cfg.train.seed, step, stage.batch_size, stage.seq_len,
                                plan.model.vocab_size)
        batch = jax.device_put(batch, fns.batch_sharding)
      state, step_metrics = fns.train(state, batch, np.float32(schedule(tokens)))
      done = step + 1
      if profile and done == profile[-1]:
        jax.profiler.stop_trace()

      if done % cfg.log.every_steps == 0 or done == plan.steps:
        step_metrics = jax.device_get(step_metrics)
        now = time.perf_counter()
        step_time = (now - last_log_time) / (done - last_log_step)
        tokens_per_s = stage.batch_tokens / step_time
        row = {"step": done, "loss": float(step_metrics["loss"]),
               "lr": float(schedule(tokens)), "grad_norm": float(step_metrics["grad_norm"]),
               "tokens": plan.tokens[done], "tokens_per_s": tokens_per_s,
               "step_time_s": step_time, "seq_len": stage.seq_len,
               "batch_tokens": stage.batch_tokens,
               "mfu": metrics_lib.flops_per_token(plan.model, stage.seq_len) * tokens_per_s
               / peak if peak else 0.0}
        if loader:
          row.update({f"data/{name}_tokens": count
                      for name, count in _global_tokens(loader).items()})
        memory = jax.local_devices()[0].memory_stats()   # None where the backend has none
        if memory and "peak_bytes_in_use" in memory:
          row["device_peak_memory_gib"] = memory["peak_bytes_in_use"] / 2**30
        if writer:
          writer.write(row)
        progress.update(done, row)
        last_log_time, last_log_step = now, done

      stopped = stop.signal
      if done % cfg.checkpoint.every_steps == 0 or done == plan.steps or stopped:
        if cfg.train.anneal_tokens and plan.tokens[done] > plan.anneal_from:
          averaged += 1   # Polyak average over the annealing phase's checkpoints
          # (a fresh array even for the first: `state` is donated to the next step)
          average = polyak_update(state["model"] if average is None else average,
                                  state["model"], averaged)
        meta = {"step": done, "tokens": plan.tokens[done], "seed": cfg.train.seed,
                "averaged": averaged, "has_average": average is not None,
                "has_data": loader is not None, "config": config_json}
        checkpointer.save(done, state, meta, average, loader.get_state() if loader else None)
      if stopped:
        break

  checkpointer.close()
  progress.close()
  if writer:
    writer.close()
  summary = {"steps": done, "stopped_by": stopped, "wall_s": time.perf_counter() - run_start,
             "peak_flops": peak, "peak_source": peak_source,
             "compilations": fns.train.jitted._cache_size()}
  rows = metrics_lib.read_metrics(workdir)
  if rows:
    summary.update(loss=rows[-1]["loss"], tokens=rows[-1]["tokens"],
                   tokens_per_s=float(np.median([r["tokens_per_s"] for r in rows[1:] or rows])),
                   mfu=float(np.median([r["mfu"] for r in rows[1:] or rows])))
    if jax.process_index() == 0:
      metrics_lib.plot(rows, workdir / "loss_lr.png")
  if average is not None and done == plan.steps and jax.process_index() == 0:
    # The released model of Llama 3 is this average of the annealing checkpoints.
    import orbax.checkpoint as ocp
    exporter = ocp.StandardCheckpointer()
    exporter.save((workdir / "averaged_params").resolve(), average, force=True)
    exporter.wait_until_finished()
    summary["averaged_checkpoints"] = averaged
  return summary


def _global_tokens(loader) -> dict[str, int]:
  """Tokens per source delivered so far, summed over all processes."""
  local = loader.tokens_per_source()
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  counts = multihost_utils.process_allgather(np.array(list(local.values()), np.int64))
  return dict(zip(local, counts.reshape(-1, len(local)).sum(0).tolist()))


class _Progress:
  """A rich progress bar with ETA on a terminal; plain log lines otherwise."""

  def __init__(self, total: int, start: int):
    self.bar = None
    if sys.stdout.isatty():
      from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                 TimeRemainingColumn)
      self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
      self.bar.start()
      self.task = self.bar.add_task("train", total=total, completed=start, info="")

  def update(self, step: int, row: dict) -> None:
    info = (f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s  "
            f"mfu {row['mfu']:.1%}")
    if self.bar:
      self.bar.update(self.task, completed=step, info=info)
    else:
      print(f"step {step}: {info}", flush=True)

  def close(self) -> None:
    if self.bar:
      self.bar.stop()
