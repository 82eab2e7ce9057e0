"""The training loop, one for every objective: set up, restore or start, step, log, checkpoint.

    summary = train(run_config(cfg), workdir)                   # pre-training (next token)
    summary = train(run, workdir, objective=MyLoss(), source=my_rows)   # any other objective
    summary = train(sft_run, workdir)     # run.init.path: fine-tune; run.data.path: conversations

Run through `python -m experiments.pretrain`. `run` is the typed config of
llama3_jax/train/config.py (a launcher converts its ConfigDict once, with `run_config`); an
objective (llama3_jax/objectives/next_token.py) says what the step
minimises and which batch fields it reads; `source` gives the rows (default: what `cfg.data`
names, llama3_jax/data/batches.py). Every JAX process runs this alike
(llama3_jax/runtime/distributed.py); process 0 alone writes the job-wide files (metrics.jsonl,
TensorBoard, plots, goodput.jsonl, stragglers.jsonl), each process its own log (WORKDIR/logs).
Around the steps, hooks with one job each (llama3_jax/runtime/hooks.py): evaluation, metrics
rows, goodput, stragglers, the profiler, the hang watchdog, injected faults, checkpointing.
A non-finite update is refused inside the compiled
step and K in a row roll the run back (runtime/guard.py); faults can be injected for tests.
"""

import dataclasses
import json
import logging
import pathlib
import time

import jax
import numpy as np
from flax import nnx

from llama3_jax.checkpoint import model as model_lib
from llama3_jax.checkpoint.run import Checkpointing, RunCheckpoints, model_meta
from llama3_jax.data import corpus
from llama3_jax.data.batches import Batches
from llama3_jax.data.source import Source
from llama3_jax.data.source_for import source_for
from llama3_jax.errors import writable_dir
from llama3_jax.optim.optimizer import build_optimizer, nonfinite_counts
from llama3_jax.optim.schedules import lr_schedule, stage_at
from llama3_jax.parallel.pipeline import PipelineStats, Schedule
from llama3_jax.runtime import logs
from llama3_jax.runtime.faults import Faults
from llama3_jax.runtime.goodput import Goodput, report as goodput_report
from llama3_jax.runtime.guard import Guard
from llama3_jax.runtime.hooks import StepResult
from llama3_jax.runtime.profiler import Profiler
from llama3_jax.runtime.signals import StopRequest
from llama3_jax.runtime.stragglers import Stragglers
from llama3_jax.runtime.watchdog import Watchdog
from llama3_jax.train import metrics as metrics_lib
from llama3_jax.train.config import RunConfig, to_config_dict
from llama3_jax.objectives import NEXT_TOKEN, Objective
from llama3_jax.train.plan import make_plan
from llama3_jax.train.setup import setup

log = logging.getLogger("llama3_jax")


def train(run: RunConfig, workdir, *, objective: Objective = NEXT_TOKEN,
          source: Source | None = None, started_at: float | None = None) -> dict:
  """Runs (or resumes) the configured training; returns a summary dict.

  `started_at`: when this process started (time.time()), for the goodput's start-up share.
  """
  started_at = time.time() if started_at is None else started_at
  if not isinstance(run, RunConfig):
    raise TypeError(f"train takes a RunConfig, not a {type(run).__name__}; convert a "
                    "ConfigDict with llama3_jax.train.config.run_config(cfg)")
  init_model = model_lib.init_model_config(run.init.path) if run.init.path else None
  plan = make_plan(run, jax.device_count(), jax.process_count(), init_model)
  # The data is opened and every stage checked against it before the workdir is touched, so
  # bad data leaves an existing run's files as they were.
  if source is None:
    source = source_for(run.data, run.train.seed, plan.model.vocab_size,
                        run.dpo.max_examples_per_row)
  source.check_stages(plan.stages)   # fails now, not when a later stage begins
  # Orbax needs absolute paths; a workdir that cannot be written fails here, not at step N.
  workdir = writable_dir(pathlib.Path(workdir).resolve(), "workdir")
  with logs.process_log(workdir) as log_file:
    # ---- everything the run holds, made here ---------------------------------------------
    primary = jax.process_index() == 0
    goodput = Goodput(workdir, started_at, enabled=primary)
    t = run.train
    tx = build_optimizer(weight_decay=t.weight_decay, b1=t.b1, b2=t.b2, clip_norm=t.clip_norm,
                         skip_nonfinite=run.resilience.skip_nonfinite)
    schedule = lr_schedule(t.peak_lr, plan.warmup_tokens, plan.tokens[-1], plan.anneal_tokens,
                           t.floor_ratio)
    s = setup(plan.model, plan.mesh, sharding=plan.sharding, optimizer=tx, objective=objective,
              micro_batches=plan.micro_batches_for, seed=t.seed)
    checkpoints = RunCheckpoints(
        workdir, run.checkpoint, s, plan, data_streams=source.state_streams,
        meta={"seed": t.seed, "model": model_meta(plan.model),
              # what the checkpoint holds: "lm" (a Transformer) or "reward" (a RewardModel)
              "model_kind": objective.model_kind,
              # what generation, evaluation and fine-tuning must encode with (path, sha256)
              "tokenizer": source.manifest.get("tokenizer"),
              "config": json.loads(to_config_dict(run).to_json_best_effort())},
        initial=lambda: s.init_state(model_lib.pretrained(run.init.path, plan.model,
                                                          run.init.averaged)
                                     if run.init.path else None))
    faults = Faults(run.faults, jax.process_index(), checkpoints=checkpoints.directory)
    batches = Batches(faults.wrap(source), s.fns.batch_sharding, objective.fields)
    evaluation = []
    if run.eval.every_steps:
      from llama3_jax.eval.during_training import Evaluator
      evaluation.append(Evaluator(run.eval, (source.manifest.get("tokenizer") or {}).get("path"),
                                  lambda state: nnx.merge(s.graphdef, state).model))
    watchdog = Watchdog(run.runtime.watchdog_s, log_file, lambda: _describe(s.mesh),
                        compile_s=run.runtime.watchdog_compile_s)

    with watchdog:
      # ---- start: compile the first step while the state is restored or initialised -------
      watchdog.arm(watchdog.compile_s)
      goodput.lap("startup")
      first = checkpoints.latest_step()
      compiling = None
      if first < plan.steps:
        stage = plan.stages[stage_at(plan.stages, plan.tokens[first])]
        compiling = s.compile_ahead(batches.abstract(stage), lambda: schedule(plan.tokens[first]))
      start, state, meta, data = checkpoints.restore()
      batches.set_state(*data, plan.stages)
      goodput.lap("restore" if start else "startup")
      goodput.resume(start)
      if start:
        log.info("resumed from step %d (%d tokens)", start, meta["tokens"])
      if start >= plan.steps:
        print(f"run complete: {workdir} already has step {start} of {plan.steps}")
        checkpoints.close()
        goodput.close()
        return {"steps": start, "complete": True}
      if compiling is not None:
        compiling.result()

      guard = Guard(run.resilience, rollbacks=meta.get("rollbacks", 0))
      peak_cache = corpus.cache_dir() / "peak_flops.json"
      peak, peak_source = metrics_lib.peak_flops(run.mfu.peak_flops, peak_cache)
      stragglers = Stragglers(run.resilience.straggler_factor, workdir, primary)
      pipeline = []
      if s.mesh.shape["stage"] > 1:
        pipeline.append(PipelineStats(lambda: Schedule(
            s.mesh.shape["stage"], plan.sharding.pipeline_repeats,
            plan.micro_batches[batches.stage_index or 0], plan.model.n_layers)))
      logger = metrics_lib.MetricsLogger(
          workdir, steps=plan.steps, start=start, every=run.log.every_steps, tokens=plan.tokens,
          schedule=schedule, model_config=plan.model, peak=peak,
          fields=[*pipeline, guard, batches, stragglers, goodput], primary=primary)
      # In this order: evaluation's scores go into the step's values first; the metrics row
      # sees the step's goodput lap and straggler time; the watchdog's beat comes after them,
      # so logging never eats into the next step's deadline, and arms the deadline before an
      # injected hang; a `before` kill strikes before the step's checkpoint is begun.
      hooks = [*evaluation, goodput, stragglers, Profiler(run.profile.steps, workdir / "profile"),
               logger, watchdog, faults]
      hooks.append(Checkpointing(
          checkpoints, run.checkpoint.every_steps, hooks=hooks,
          data=lambda: (batches.position, batches.get_state()),
          meta=lambda: {"rollbacks": guard.rollbacks}))

      # ---- the steps ------------------------------------------------------------------------
      compiled_stages, stopped, step, done = set(), None, start, start
      run_start = time.perf_counter()
      goodput.lap("startup")
      log.info("process %d of %d: %d of %d devices, mesh %s, from step %d", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               dict(s.mesh.shape), start)
      with StopRequest() as stop:
        while step < plan.steps:
          stage_index = stage_at(plan.stages, plan.tokens[step])
          batches.set_stage(stage_index, plan.stages[stage_index])
          started = time.perf_counter()
          for hook in hooks:
            hook.before_step(step + 1, stage_index not in compiled_stages)
          compiled_stages.add(stage_index)
          state, result = _step(s.fns, state, batches, np.float32(schedule(plan.tokens[step])),
                                step + 1, hooks, started, last=step + 1 == plan.steps)
          done = step + 1
          log.debug("step %d: loss %.6f, %.3f s (host %.3f s)%s", done, result.values["loss"],
                    result.step_s, result.host_s, ", compiled" if result.compiled else "")
          verdict = guard.check(done, float(result.values["loss"]), result.skipped)
          stopped = None if verdict.rollback else stop.requested(done)
          result = dataclasses.replace(result, rollback=verdict.rollback,
                                       stopping=stopped is not None)
          for hook in hooks:   # the metrics row, ..., the checkpoint save (see `hooks`)
            if hook.due(result):
              hook.after_step(result)
          if verdict.rollback:
            data_skip = batches.position - done
            step, state, _ = checkpoints.rollback(verdict.before)
            log.warning("rolled back to step %d; batches %d..%d are skipped", step,
                        step + 1 + data_skip, batches.position)
            for hook in hooks:
              hook.after_rollback(step)
            continue
          step = done
          if stopped:
            break

      # ---- the end --------------------------------------------------------------------------
      watchdog.pause()
      checkpoints.close()
      goodput.lap("checkpoint")
      summary = {"steps": done, "stopped_by": stopped, "wall_s": time.perf_counter() - run_start,
                 "peak_flops": peak, "peak_source": peak_source,
                 "compilations": s.fns.train.compilations(),
                 "rollbacks": guard.rollbacks, "loss_spikes": guard.spikes,
                 "straggler_steps": stragglers.count, **logger.close()}
      if (jax.devices()[0].platform == "cpu" and not run.mfu.peak_flops and primary
          and not stopped):   # measured again for the next launch, off this one's critical path
        metrics_lib.measured_cpu_peak(peak_cache, remeasure=True)
      if done == plan.steps:   # the released model of Llama 3 is this average
        summary.update(checkpoints.export_average())
      goodput.lap("other")
      if primary:
        summary["goodput"] = goodput.summary()
        log.info(goodput_report(summary["goodput"]))
      goodput.close()
      return summary


def _step(fns, state, batches, lr, step: int, hooks, start: float, last: bool):
  """Runs step `step` (1-based), begun at `start` (perf_counter): (new state, StepResult)."""
  batch = next(batches)
  compiled_before = fns.train.compilations()
  state, metrics = fns.train(state, batch, lr)
  host_s = time.perf_counter() - start
  for hook in hooks:
    hook.dispatched(metrics["loss"])
  counts = nonfinite_counts(state) or {}
  values = {key: np.asarray(value) for key, value in {**metrics, **counts}.items()}
  compiled = fns.train.compilations() > compiled_before
  skipped = bool("finite" in values and not values["finite"])
  return state, StepResult(step, batches.stage, values, compiled, skipped,
                           time.perf_counter() - start, host_s, last, state)


def _describe(mesh) -> dict:
  """Beside the stacks in a hang dump: where this process and its devices stand."""
  return {"process": jax.process_index(), "processes": jax.process_count(),
          "mesh": dict(mesh.shape), "live_arrays": len(jax.live_arrays()),
          "devices": {str(d): d.memory_stats() for d in jax.local_devices()}}
