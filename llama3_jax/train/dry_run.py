"""A dry run of a training job: the real config, mesh and train step, without devices.

    python -m experiments.pretrain --config experiments/configs/llama3_405b.py --dry-run
    python -m experiments.dpo --config experiments/configs/dpo_llama3_405b.py --dry-run
    report = dry_run(cfg, n_devices=16384, hardware="h100")     # text; raises on a bad config

Checks, in order, what the job would check at start and what it would first trip on:
1. the config: `make_plan` validates the model, every batch/sequence stage and the mesh for
   `n_devices` devices (the same ValueErrors / UserErrors the launcher gives);
2. the mesh: an abstract mesh of that many devices (`jax.sharding.AbstractMesh`, no devices);
3. the train step: the abstract training state (model + AdamW, `nnx.eval_shape`) with its
   shardings on that mesh and the largest stage's batch as ShapeDtypeStructs are traced
   (`jax.jit(...).trace`: every shape, dtype, sharding rule, pipeline and context-parallel
   shard_map of the real step) and lowered to StableHLO for the whole mesh (`.lower()`);
   nothing is allocated. Compiling for the GPU needs the GPU (XLA's GPU compiler, its
   autotuning and NCCL), so the dry run stops at the lowered module: what it cannot check is
   XLA's own memory plan and kernel choices for the GPU;
4. the plan (llama3_jax/planner/): per-device memory by component, where weights are
   gathered, collectives per axis and link, the bubble and the expected MFU on `hardware`.
"""

import math
import time

import jax
import numpy as np
from flax import linen

from llama3_jax.checkpoint.manager import abstract_like
from llama3_jax.data.batches import abstract_batch
from llama3_jax.optim.optimizer import build_optimizer
from llama3_jax.planner import Layout, get_hardware
from llama3_jax.planner.memory import gib
from llama3_jax.planner.search import MEMORY_HEADROOM, evaluate, explain
from llama3_jax.sharding import AXES, abstract_mesh, make_rules, state_shardings
from llama3_jax.sharding.rules import batch_spec
from llama3_jax.train.config import run_config
from llama3_jax.objectives.next_token import NEXT_TOKEN
from llama3_jax.train.plan import make_plan
from llama3_jax.train.setup import abstract_train_state
from llama3_jax.train.step import make_step_fns


def frozen_reference(frozen, memory: dict, hw) -> str:
  """The frozen reference model's share (DPO) on top of the planner's total for the policy:
  its parameters, sharded as the policy's, and at most its weights gathered as the policy's
  are (forward only: no gradients, no optimizer state, no activations kept)."""
  sharded = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                for x in jax.tree.leaves(frozen))
  share = sharded + memory["gathered weights"]
  total, usable = memory["total"] + share, hw.memory_bytes * (1 - MEMORY_HEADROOM)
  return (f"   + frozen reference {gib(share):.2f} GiB per device (parameters {gib(sharded):.2f}, "
          f"gathered weights {gib(memory['gathered weights']):.2f}; forward only) = "
          f"{gib(total):.2f} GiB: "
          + ("fits" if total <= usable else f"does not fit the {gib(usable):.1f} GiB usable"))


def default_devices(mesh) -> int:
  """The mesh's product; with a -1 (fill) axis, one 8-GPU node per dcn slice."""
  sizes = [getattr(mesh, a) for a in AXES]
  if -1 not in sizes:
    return int(np.prod(sizes))
  return 8 * int(np.prod([getattr(mesh, "dcn_" + a) for a in AXES]))


def _dcn(mesh) -> dict | None:
  """The config's multi-node split, if it has one (else the planner places axes itself)."""
  dcn = mesh.dcn_sizes()
  return dcn if any(n > 1 for n in dcn.values()) else None


def dry_run(cfg, n_devices: int | None = None, hardware: str = "h100",
            platform: str = "cuda", objective=NEXT_TOKEN) -> str:
  """`objective`: the step's (post-training: SFT's next token, DPO with its frozen reference,
  the reward model); model.size="init" reads the starting model's config from init.path."""
  started = time.perf_counter()
  run = run_config(cfg)
  n_devices = n_devices or default_devices(run.mesh)
  init_model = None
  if run.model.size == "init" and run.init.path:
    from llama3_jax.checkpoint.model import init_model_config
    init_model = init_model_config(run.init.path)
  plan = make_plan(run, n_devices, init_model=init_model)
  lines = [f"dry run: {n_devices:,} devices, model {run.model.size} "
           f"({plan.model.n_layers} layers), {len(plan.stages)} stage(s), {plan.steps:,} steps"]
  sizes = plan.mesh.sizes(n_devices)
  lines.append("1. config valid; mesh " + " x ".join(f"{a}={n}" for a, n in sizes.items()))
  mesh = abstract_mesh(sizes)
  rules = make_rules(plan.model, sizes, plan.sharding)
  t = run.train
  tx = build_optimizer(weight_decay=t.weight_decay, b1=t.b1, b2=t.b2, clip_norm=t.clip_norm,
                       skip_nonfinite=run.resilience.skip_nonfinite)
  graphdef, abstract, _ = abstract_train_state(plan.model, tx, objective, t.seed)
  shardings = state_shardings(abstract, mesh, rules)
  abstract = abstract_like(abstract, shardings)
  fns = make_step_fns(graphdef, shardings, mesh, rules, plan.sharding, plan.micro_batches_for,
                      objective)
  stage = max(plan.stages, key=lambda s: s.batch_tokens * s.seq_len)
  batch = abstract_batch(objective.fields, stage.batch_size, stage.seq_len,
                         jax.sharding.NamedSharding(mesh, batch_spec(rules)))
  lines.append(f"2. abstract mesh of {mesh.size:,} devices; batch {stage.batch_size:,} x "
               f"{stage.seq_len:,} (the largest stage)")
  with jax.sharding.use_abstract_mesh(mesh), linen.logical_axis_rules(rules):
    traced = fns.train.jitted.trace(abstract, batch, np.float32(0))
    lines.append(f"3. train step traced ({time.perf_counter() - started:.1f} s so far)")
    try:
      # With only an abstract mesh, JAX lowers for a named platform (as jax.export does).
      lowered = traced.lower(lowering_platforms=(platform,))
      text = lowered.as_text()
      annotations = text.count("sdy.sharding") + text.count("mhlo.sharding")
      lines.append(f"   lowered to StableHLO for {platform} on {mesh.size:,} devices: "
                   f"{len(text) / 1e6:.1f} MB of text, {annotations:,} sharding annotations; "
                   "compiling for the GPU needs the GPU")
    except Exception as error:  # noqa: BLE001 - reported: the dry run says what it checked
      lines.append(f"   lowering without devices failed ({type(error).__name__}: "
                   f"{str(error)[:200]}); checked up to tracing")
  hw = get_hardware(hardware)

  def planned(stage):
    layout = Layout(sizes, stage.seq_len, stage.batch_tokens,
                    micro_batches=plan.micro_batches_for(stage.batch_size, stage.seq_len),
                    repeats=plan.sharding.pipeline_repeats, schedule="circular",
                    fsdp_mode=plan.sharding.fsdp_mode, remat=plan.model.remat,
                    sequence_parallel=plan.sharding.sequence_parallel,
                    gather_dtype=plan.sharding.gather_dtype, step="xla",
                    fused_matmuls=plan.model.fused_matmuls, dcn=_dcn(plan.mesh))
    return evaluate(plan.model, layout, hw, n_devices)

  result = planned(stage)
  gather_dtype = plan.sharding.gather_dtype or plan.model.param_dtype
  lines.append("4. plan of this step as XLA compiles it (circular pipeline, weights gathered in "
               f"{gather_dtype}) on {hw.name}:")
  lines += ["   " + line for line in explain(plan.model, result, hw).splitlines()]
  for i, other in enumerate(plan.stages):   # every other stage's headline: each must fit
    if other != stage:
      r = planned(other)
      lines.append(f"   stage {i} ({other.batch_size:,} x {other.seq_len:,}, "
                   f"M={r.layout.micro_batches}): " + (
                       f"{gib(r.memory['total']):.1f} GiB, MFU {r.time['mfu']:.1%}, "
                       + ("fits" if r.fits else "does not fit") if r.memory else str(r.reason)))
  if "frozen" in abstract and jax.tree.leaves(abstract["frozen"]) and result.memory:
    lines.append(frozen_reference(abstract["frozen"], result.memory, hw))
  gathered = ("every weight gathered over fsdp once per step and kept for backward (Llama 3's "
              "mode)" if plan.sharding.fsdp_mode == "llama3" else
              "weights gathered over fsdp layer by layer, in forward and again in backward")
  if sizes["stage"] == 1:
    reduced = ("accumulated gathered and reduce-scattered over fsdp once per step"
               if plan.sharding.fsdp_mode == "llama3" else
               "reduce-scattered over fsdp after every micro-batch (ZeRO-3)")
  elif plan.sharding.fsdp_mode == "llama3":
    reduced = ("accumulated per device through the pipeline loop and summed over fsdp once per "
               "step")
  else:
    reduced = "reduced over fsdp inside the pipeline loop, once per iteration (ZeRO-3)"
  lines.append(f"   gathered: {gathered}; gradients {reduced} in {plan.model.param_dtype}")
  lines.append(f"dry run done in {time.perf_counter() - started:.1f} s")
  return "\n".join(lines)
