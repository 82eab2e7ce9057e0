"""The pre-training loop: mesh, state (restored or new), stages, steps, metrics, checkpoints.

Run through `python -m experiments.pretrain`; `train(config, workdir)` is the library entry.
Every JAX process runs it alike (llama3_jax/runtime/distributed.py); process 0 alone writes the
job-wide files (metrics.jsonl, TensorBoard, plots, goodput.jsonl, stragglers.jsonl), each
process its own log (WORKDIR/logs). Around the steps: a non-finite update is refused inside
the compiled step and K in a row roll the run back (runtime/guard.py), a hang watchdog, a
straggler report and the goodput timeline (runtime/); faults can be injected for tests.
"""

import concurrent.futures
import dataclasses
import json
import logging
import pathlib
import time

import jax
import numpy as np
from flax import linen
from flax import nnx

from llama3_jax.checkpoint.averaging import polyak_update
from llama3_jax.checkpoint.manager import Checkpointer, abstract_like
from llama3_jax.data import corpus
from llama3_jax.data.loader import Loader, process_rows, to_global
from llama3_jax.data.synthetic import synthetic_batch
from llama3_jax.model import ModelConfig, RopeScaling, Transformer
from llama3_jax.parallel.pipeline import Schedule
from llama3_jax.optim.optimizer import build_optimizer, nonfinite_counts
from llama3_jax.optim.schedules import (Stage, lr_schedule, stage_at, tokens_after,
                                        validate_stages)
from llama3_jax.sharding import (MeshConfig, ShardingConfig, make_mesh, make_rules,
                                 state_shardings, validate)
from llama3_jax.sharding.rules import vocab_over_fsdp_pays
from llama3_jax.runtime import logs, stragglers
from llama3_jax.runtime.faults import Faults
from llama3_jax.runtime.goodput import Goodput, report as goodput_report
from llama3_jax.runtime.guard import Guard, GuardConfig
from llama3_jax.runtime.signals import StopRequest
from llama3_jax.runtime.watchdog import Watchdog
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
  sharding = dict(cfg.sharding)
  # A string field on the command line: "auto" (decided by the run's largest batch), or a bool.
  choice = {"auto": "auto", "true": True, "false": False}.get(
      str(sharding.get("vocab_over_fsdp", False)).lower())
  if choice is None:
    raise ValueError(f"sharding.vocab_over_fsdp={sharding['vocab_over_fsdp']!r}; use auto, "
                     "True or False")
  if choice == "auto":
    choice = vocab_over_fsdp_pays(model.vocab_size,
                                  max(stage.batch_tokens for stage in stages), sizes)
  sharding["vocab_over_fsdp"] = choice
  return Plan(model, mesh, ShardingConfig(**sharding), stages, cfg.train.steps, tokens,
              anneal_from)


def train(cfg, workdir, started_at: float | None = None) -> dict:
  """Runs (or resumes) the configured pre-training; returns a summary dict.

  `started_at`: when this process started (time.time()), for the goodput's start-up share.
  """
  started_at = time.time() if started_at is None else started_at
  workdir = pathlib.Path(workdir).resolve()   # Orbax needs absolute paths
  workdir.mkdir(parents=True, exist_ok=True)
  with logs.process_log(workdir) as log_file:
    return _Run(cfg, workdir, started_at, log_file).run()


class _Run:
  """One attempt at the run: the recipe in `run`, one method per job it does."""

  def __init__(self, cfg, workdir: pathlib.Path, started_at: float, log_file):
    self.cfg, self.workdir, self.log_file = cfg, workdir, log_file
    self.in_flight = self.current = None
    self.primary = jax.process_index() == 0
    self.goodput = Goodput(workdir, started_at, enabled=self.primary)
    self.faults = Faults(cfg.get("faults", {}), jax.process_index())
    resilience = dict(cfg.get("resilience", {}))
    self.skip_nonfinite = resilience.pop("skip_nonfinite", True)
    self.straggler_factor = resilience.pop("straggler_factor", 3.0)
    self.guard_config = GuardConfig(**resilience)
    self.plan = plan = make_plan(cfg)
    self.mesh = make_mesh(plan.mesh)
    self.rules = make_rules(plan.model, dict(self.mesh.shape), plan.sharding)
    tx = build_optimizer(weight_decay=cfg.train.weight_decay, b1=cfg.train.b1, b2=cfg.train.b2,
                         clip_norm=cfg.train.clip_norm, skip_nonfinite=self.skip_nonfinite)
    self.schedule = lr_schedule(cfg.train.peak_lr, cfg.train.warmup_tokens, plan.tokens[-1],
                                cfg.train.anneal_tokens, cfg.train.floor_ratio)
    self.build = lambda: TrainState(Transformer(plan.model, rngs=nnx.Rngs(cfg.train.seed)), tx)
    self.graphdef, abstract_state = nnx.split(nnx.eval_shape(self.build))
    self.shardings = state_shardings(abstract_state, self.mesh, self.rules)
    self.abstract = (abstract_like(abstract_state, self.shardings),
                     abstract_like(abstract_state["model"], self.shardings["model"]))
    self.checkpointer = Checkpointer(
        workdir / "checkpoints", max_to_keep=cfg.checkpoint.max_to_keep,
        keep_period=cfg.checkpoint.keep_period or None, async_save=cfg.checkpoint.async_save)
    self.config_json = json.loads(cfg.to_json_best_effort())
    self.loader = None
    if not cfg.data.synthetic:
      self.loader = Loader(cfg.data.path or corpus.embedded_corpus(), seed=cfg.train.seed,
                           streams=cfg.data.streams, vocab_size=plan.model.vocab_size)

  # ---- state: restored, new, or rolled back -------------------------------------------------

  def restore(self, at_most: int | None = None, data: bool = True) -> int:
    """Loads the newest readable checkpoint (at most `at_most`), or a new state; the step."""
    streams = range(self.cfg.data.streams) if self.loader and data else ()
    restored = self.checkpointer.restore_latest(*self.abstract, data_streams=streams,
                                                at_most=at_most)
    if restored is None:
      self.state = jax.jit(lambda: nnx.split(self.build())[1], out_shardings=self.shardings)()
      self.average, self.meta = None, {}
      if self.loader and data:
        self.loader.set_state({}, self.plan.stages)
      return 0
    step, self.state, self.meta, self.average, data_state = restored
    if self.loader and data:
      self.loader.set_state(data_state or {}, self.plan.stages)
    if self.meta["config"]["model"] != self.config_json["model"]:
      raise ValueError(f"{self.workdir} holds a run of another model "
                       f"({self.meta['config']['model']}); use a new --workdir or the same "
                       "model config")
    return step

  def rollback(self, before: int, done: int) -> int:
    """Back to the newest checkpoint at or before step `before`; the data since is skipped.

    Batches are numbered by their place in the data: step s (1-based) reads batch
    s + data_skip. The loader keeps its place, so the steps after the checkpoint read new data.
    """
    self.checkpointer.wait()
    step = self.restore(at_most=before, data=False)
    self.checkpointer.delete_after(step)
    log.warning("rolled back to step %d; batches %d..%d are skipped", step,
                step + 1 + self.data_skip, done + self.data_skip)
    self.data_skip += done - step
    self.averaged = self.meta.get("averaged", 0)
    if self.writer:
      self.writer.truncate(step)
    self.goodput.lap("restore")
    self.goodput.resume(step, "rollback")
    return step

  # ---- one step ------------------------------------------------------------------------------

  def batch(self, step: int, stage_index: int, stage):
    if self.loader:
      rows = process_rows(self.fns.batch_sharding, stage.batch_size, stage.seq_len)
      batch = self.loader.next_batch(stage_index, stage, rows)
      batch = self.faults.poison(batch, step + 1 + self.data_skip)
      return to_global(batch, self.fns.batch_sharding, stage.batch_size)
    batch = synthetic_batch(self.cfg.train.seed, step + self.data_skip, stage.batch_size,
                            stage.seq_len, self.plan.model.vocab_size)
    batch = self.faults.poison(batch, step + 1 + self.data_skip)
    return {key: jax.make_array_from_callback(value.shape, self.fns.batch_sharding,
                                              lambda index, v=value: v[index])
            for key, value in batch.items()}

  def step(self, step: int, stage_index: int, stage) -> tuple[dict, bool, float, float]:
    """Runs step `step` (0-based); (its metrics as numbers, compiled?, step_s, host_s)."""
    start = time.perf_counter()
    self.faults.sleep(step + 1)
    batch = self.batch(step, stage_index, stage)
    compiled_before = self.fns.train.jitted._cache_size()
    lr = np.float32(self.schedule(self.plan.tokens[step]))
    self.state, metrics = self.fns.train(self.state, batch, lr)
    host_s = time.perf_counter() - start
    if self.writer:
      self.writer.open_tensorboard()   # while the devices work
    self.in_flight = metrics["loss"]
    counts = nonfinite_counts(self.state) or {}
    values = {key: np.asarray(value) for key, value in {**metrics, **counts}.items()}
    if self.writer:   # open before the step counts as done: the hang watchdog times the next
      self.writer.wait_for_tensorboard()
    compiled = self.fns.train.jitted._cache_size() > compiled_before
    return values, compiled, time.perf_counter() - start, host_s

  # ---- outputs -------------------------------------------------------------------------------

  def log_row(self, done: int, stage, values: dict) -> None:
    now = time.perf_counter()
    step_time = (now - self.last_log[0]) / (done - self.last_log[1])
    tokens_per_s = stage.batch_tokens / step_time
    lr = float(self.schedule(self.plan.tokens[done - 1]))
    row = {"step": done, "loss": float(values["loss"]), "lr": lr,
           "grad_norm": float(values["grad_norm"]), "tokens": self.plan.tokens[done],
           "tokens_per_s": tokens_per_s, "step_time_s": step_time, "seq_len": stage.seq_len,
           "batch_tokens": stage.batch_tokens,
           "mfu": metrics_lib.flops_per_token(self.plan.model, stage.seq_len) * tokens_per_s
           / self.peak if self.peak else 0.0}
    if "finite" in values:
      row.update(skipped=int(not values["finite"]),
                 skipped_total=int(values["skipped_total"]))
    row.update(rollbacks=self.guard.rollbacks, loss_spikes=self.guard.spikes)
    if self.mesh.shape["stage"] > 1:   # idle / busy stage-iterations of the pipeline schedule
      row["pipeline_bubble"] = Schedule(self.mesh.shape["stage"],
                                        self.plan.sharding.pipeline_repeats,
                                        self.cfg.train.micro_batches).bubble
    if self.loader:
      row.update({f"data/{name}_tokens": count
                  for name, count in _global_tokens(self.loader).items()})
    memory = jax.local_devices()[0].memory_stats()   # None where the backend has none
    if memory and "peak_bytes_in_use" in memory:
      row["device_peak_memory_gib"] = memory["peak_bytes_in_use"] / 2**30
    flags = self.step_times.report(self.straggler_factor)   # all processes together
    row["straggler_steps"] = self.stragglers = self.stragglers + len(flags)
    if self.primary:
      for flag in flags:
        log.warning(stragglers.describe(flag))
      if flags:
        with open(self.workdir / "stragglers.jsonl", "a") as out:
          out.writelines(json.dumps(flag) + "\n" for flag in flags)
      goodput = self.goodput.summary()
      row["goodput"] = goodput.get("goodput", 0.0)
      self.writer.write(row)
      self.progress.update(done, row)
    self.last_log = (now, done)

  def save(self, done: int) -> None:
    cfg, plan = self.cfg, self.plan
    if cfg.train.anneal_tokens and plan.tokens[done] > plan.anneal_from:
      self.averaged += 1   # Polyak average over the annealing phase's checkpoints
      # (a fresh array even for the first: `state` is donated to the next step)
      self.average = polyak_update(self.state["model"] if self.average is None
                                   else self.average, self.state["model"], self.averaged)
    meta = {"step": done, "tokens": plan.tokens[done], "seed": cfg.train.seed,
            "averaged": self.averaged, "has_average": self.average is not None,
            "has_data": self.loader is not None, "data_skip": self.data_skip,
            "rollbacks": self.guard.rollbacks, "config": self.config_json}
    self.checkpointer.save(done, self.state, meta, self.average,
                           self.loader.get_state() if self.loader else None)
    self.faults.kill(done, "during", self.checkpointer.directory)
    self.faults.kill(done, "after", self.checkpointer.directory)

  def describe(self) -> dict:
    """What the hang watchdog writes beside the stacks: where this process and its devices
    stand. A step dispatched but not done on the device points at a collective (a peer that
    never joined it); a step never dispatched, at this host."""
    ready = getattr(self.in_flight, "is_ready", None)
    return {"process": jax.process_index(), "processes": jax.process_count(),
            "mesh": dict(self.mesh.shape), "step_in_progress": self.current,
            "step_dispatched": self.in_flight is not None,
            "step_done_on_device": ready() if ready else None,
            "live_arrays": len(jax.live_arrays()),
            "devices": {str(d): d.memory_stats() for d in jax.local_devices()}}

  # ---- the recipe ----------------------------------------------------------------------------

  def run(self) -> dict:
    cfg, plan = self.cfg, self.plan
    runtime = cfg.runtime
    watchdog = Watchdog(runtime.get("watchdog_s", 0), self.log_file, self.describe)
    with watchdog as dog:
      dog.arm(runtime.get("watchdog_compile_s", 0))   # restore and the first compile
      self.goodput.lap("startup")
      self.fns = make_step_fns(self.graphdef, self.shardings, self.mesh, self.rules,
                               plan.sharding, cfg.train.micro_batches)
      compiling = self.compile_ahead(self.checkpointer.latest_step() or 0)
      start = self.restore()
      self.goodput.lap("restore" if start else "startup")
      self.goodput.resume(start)
      if start:
        log.info("resumed from step %d (%d tokens)", start, self.meta["tokens"])
      if start >= plan.steps:
        print(f"run complete: {self.workdir} already has step {start} of {plan.steps}")
        self.checkpointer.close()
        self.goodput.close()
        return {"steps": start, "complete": True}
      if compiling is not None:
        compiling.result()
      return self.loop(start, dog)

  def compile_ahead(self, step: int):
    """Traces and compiles the train step for `step`'s stage in a background thread while the
    state is restored or initialised; a future, or None where there is nothing to run. The
    first step then finds the executable in jit's caches, which ahead-of-time lowering shares.
    It pays where compiling is a load from the persistent cache (a relaunch): tracing the step
    overlaps restoring the state. Two real compiles at once are no faster on a small CPU (XLA
    already uses every core). A failure only costs the head start: the step compiles when first
    called, as without this."""
    plan = self.plan
    if step >= plan.steps:
      return None
    stage = plan.stages[stage_at(plan.stages, plan.tokens[step])]
    shape = (stage.batch_size, stage.seq_len)
    dtypes = dict(inputs=np.int32, targets=np.int32, segment_ids=np.int32, loss_mask=np.float32)
    if self.loader:
      dtypes["positions"] = np.int32
    batch = {key: jax.ShapeDtypeStruct(shape, dtype, sharding=self.fns.batch_sharding)
             for key, dtype in dtypes.items()}

    def compile_step():
      try:
        with jax.set_mesh(self.mesh), linen.logical_axis_rules(self.rules):
          self.fns.train.jitted.lower(self.abstract[0], batch, np.float32(0)).compile()
      except Exception as error:  # noqa: BLE001 - the first call compiles it instead
        log.warning("compiling ahead failed (%s); the first step compiles", error)
      self.schedule(plan.tokens[step])   # the learning-rate schedule's compile, too

    return concurrent.futures.ThreadPoolExecutor(1).submit(compile_step)

  def loop(self, start: int, dog) -> dict:
    cfg, plan = self.cfg, self.plan
    self.averaged = self.meta.get("averaged", 0)
    self.data_skip = self.meta.get("data_skip", 0)
    self.guard = Guard(self.guard_config, rollbacks=self.meta.get("rollbacks", 0))
    self.peak_cache = corpus.cache_dir() / "peak_flops.json"
    self.peak, peak_source = metrics_lib.peak_flops(cfg.mfu.peak_flops, self.peak_cache)
    self.writer = metrics_lib.MetricsWriter(self.workdir, start) if self.primary else None
    self.progress = metrics_lib.Progress(plan.steps, start) if self.primary else None
    self.step_times, self.stragglers = stragglers.StepTimes(), 0
    profile = [int(s) for s in str(cfg.profile.steps).split(",") if s.strip()]
    compiled_stages, stopped, step, done = set(), None, start, start
    self.last_log = (time.perf_counter(), start)
    run_start = time.perf_counter()
    self.goodput.lap("startup")
    log.info("process %d of %d: %d of %d devices, mesh %s, from step %d",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count(), dict(self.mesh.shape), start)

    with StopRequest() as stop:
      while step < plan.steps:
        if profile and step == profile[0]:
          jax.profiler.start_trace(str(self.workdir / "profile"))
        stage_index = stage_at(plan.stages, plan.tokens[step])
        stage = plan.stages[stage_index]
        if stage_index not in compiled_stages:   # a new batch shape compiles: more time
          dog.arm(cfg.runtime.get("watchdog_compile_s", 0))
          compiled_stages.add(stage_index)
        self.current, self.in_flight = step + 1, None
        values, compiled, step_s, host_s = self.step(step, stage_index, stage)
        done = step + 1
        dog.beat(done)
        log.debug("step %d: loss %.6f, %.3f s (host %.3f s)%s", done, values["loss"], step_s,
                  host_s, ", compiled" if compiled else "")
        if profile and done == profile[-1]:
          jax.profiler.stop_trace()
        skipped = "finite" in values and not values["finite"]
        self.goodput.lap("compile" if compiled else "skipped" if skipped else "step", step=done)
        verdict = self.guard.check(done, float(values["loss"]), bool(skipped))
        if verdict.rollback:
          step = self.rollback(verdict.before, done)
          self.last_log = (time.perf_counter(), step)
          continue
        if not compiled:
          self.step_times.add(done, step_s, host_s)
        if done % cfg.log.every_steps == 0 or done == plan.steps:
          self.log_row(done, stage, values)
        stopped = stop.requested(done)
        self.faults.kill(done, "before")   # the step done, its checkpoint (if any) not begun
        if done % cfg.checkpoint.every_steps == 0 or done == plan.steps or stopped:
          self.save(done)
          self.goodput.lap("checkpoint")
        step = done
        if stopped:
          break

    dog.pause()
    self.checkpointer.close()
    self.goodput.lap("checkpoint")
    if self.progress:
      self.progress.close()
    if self.writer:
      self.writer.close()
    summary = {"steps": done, "stopped_by": stopped, "wall_s": time.perf_counter() - run_start,
               "peak_flops": self.peak, "peak_source": peak_source,
               "compilations": self.fns.train.jitted._cache_size(),
               "rollbacks": self.guard.rollbacks, "loss_spikes": self.guard.spikes,
               "straggler_steps": self.stragglers}
    if (jax.devices()[0].platform == "cpu" and not cfg.mfu.peak_flops and self.primary
        and not stopped):   # measured again for the next launch, off this one's critical path
      metrics_lib.measured_cpu_peak(self.peak_cache, remeasure=True)
    rows = metrics_lib.read_metrics(self.workdir)
    if rows:
      summary.update(loss=rows[-1]["loss"], tokens=rows[-1]["tokens"],
                     tokens_per_s=float(np.median([r["tokens_per_s"] for r in rows[1:] or rows])),
                     mfu=float(np.median([r["mfu"] for r in rows[1:] or rows])))
      if self.primary:
        metrics_lib.plot(rows, self.workdir / "loss_lr.png")
    if self.average is not None and done == plan.steps:
      # The released model of Llama 3 is this average of the annealing checkpoints. Every
      # process writes its shards.
      import orbax.checkpoint as ocp
      exporter = ocp.StandardCheckpointer()
      exporter.save((self.workdir / "averaged_params").resolve(), self.average, force=True)
      exporter.wait_until_finished()
      summary["averaged_checkpoints"] = self.averaged
    self.goodput.lap("other")
    if self.primary:
      summary["goodput"] = self.goodput.summary()
      log.info(goodput_report(summary["goodput"]))
    self.goodput.close()
    return summary


def _global_tokens(loader) -> dict[str, int]:
  """Tokens per source delivered so far, summed over all processes."""
  local = loader.tokens_per_source()
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  counts = multihost_utils.process_allgather(np.array(list(local.values()), np.int64))
  return dict(zip(local, counts.reshape(-1, len(local)).sum(0).tolist()))
