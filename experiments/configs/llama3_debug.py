"""The embedded default: a tiny Llama 3 on 8 fake CPU devices, a few minutes on 2 cores.

python -m experiments.pretrain                                   # this config
python -m experiments.pretrain --config experiments/configs/llama3_debug.py:steps=20 \
    --config.mesh.fsdp=2 --config.mesh.tensor=4 --workdir /tmp/run

It runs the whole Llama 3 recipe in miniature: warm-up, cosine, a batch and sequence ramp
(two stages), a final anneal whose checkpoints are averaged, on an fsdp x tensor mesh.
"""

import dataclasses

import ml_collections

from llama3_jax.model import SIZES


def base_config() -> ml_collections.ConfigDict:
  """Fields every pre-training config has; size-specific configs override them."""
  c = ml_collections.ConfigDict()
  c.model = dataclasses.asdict(SIZES["debug"])
  c.mesh = dict(data=1, fsdp=-1, stage=1, context=1, tensor=1, dcn_data=1, dcn_fsdp=1,
                dcn_stage=1, dcn_context=1, dcn_tensor=1)
  # context_schedule: "all_gather" | "ring"; pipeline_repeats: layer chunks per pipeline stage
  # (1 = GPipe, 2+ = interleaved); with mesh.stage > 1, train.micro_batches are the pipeline's.
  # vocab_over_fsdp: embedding and LM head split by vocabulary (see ShardingConfig); "auto" takes
  # it while an fsdp group holds fewer tokens than the vocabulary has entries.
  c.sharding = dict(fsdp_mode="zero3", sequence_parallel=False, context_schedule="all_gather",
                    pipeline_repeats=1, vocab_over_fsdp="auto")
  c.train = dict(
      steps=60, schedule_steps=0, seed=0, micro_batches=1,   # schedule_steps 0: = steps
      # (until_tokens, batch_tokens, seq_len[, mixture]): the batch/sequence ramp; None = to
      # the end; no mixture = Llama 3's general 50, math 25, code 17, multilingual 8.
      stages=((16 * 4096, 16 * 128, 128), (None, 16 * 256, 256)),
      peak_lr=3e-3, warmup_tokens=8 * 2048, anneal_tokens=10 * 4096, floor_ratio=0.01,
      weight_decay=0.1, b1=0.9, b2=0.95, clip_norm=1.0)
  # data.path: a directory made by experiments.prepare_data; "" = the embedded corpus.
  # data.streams: fixed slices of the batch's rows, each read independently (see
  # llama3_jax/data/loader.py); it must divide every stage's rows and be a multiple of the
  # number of JAX processes. data.synthetic: the arithmetic-sequence source (no files).
  c.data = dict(path="", streams=8, synthetic=False)
  c.checkpoint = dict(every_steps=20, max_to_keep=3, keep_period=0, async_save=True)
  c.log = dict(every_steps=5)
  c.mfu = dict(peak_flops=0.0)          # per-device peak FLOP/s; 0 = known table / measured
  c.profile = dict(steps="")            # "a,b": write a JAX profiler trace of steps a..b
  # cpu_devices: fake CPU devices per process (ignored on GPU/TPU; launch.local's
  # --devices-per-process wins). The hang watchdog: no step done in watchdog_s seconds (NCCL's
  # default collective timeout is 10 minutes) -> stack dump, exit 75; steps that compile get
  # watchdog_compile_s. 0 turns it off. compilation_cache: JAX's persistent compilation cache in
  # ~/.cache/llama3_jax/xla (or $LLAMA3_JAX_CACHE/xla; $JAX_COMPILATION_CACHE_DIR wins), so that
  # relaunches skip compiling.
  c.runtime = dict(cpu_devices=8, watchdog_s=600.0, watchdog_compile_s=1800.0,
                   compilation_cache=True)
  # What to do about bad steps (llama3_jax/runtime/guard.py): refuse non-finite updates in the
  # step; after max_bad_steps in a row roll back and skip that data; a loss above
  # (1 + spike_margin) x the mean of the last spike_window good steps is a spike ("log", or
  # "skip": roll back and skip its batch; margin 0 = off); steps slower than straggler_factor x
  # the median are reported with the process to blame.
  c.resilience = dict(skip_nonfinite=True, max_bad_steps=3, max_rollbacks=3, spike_margin=0.5,
                      spike_window=20, spike_action="log", straggler_factor=3.0)
  # Injected failures for tests and drills (llama3_jax/runtime/faults.py); empty = none.
  c.faults = dict(nan_batches="", kill="", sleep="")
  return ml_collections.ConfigDict(c)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base_config()
  c.mesh.fsdp, c.mesh.tensor = 4, 2
  # Like Llama 3, more math and multilingual text later in training.
  c.train.stages = (c.train.stages[0], c.train.stages[1] + (
      (("general", 40.0), ("math", 30.0), ("code", 17.0), ("multilingual", 13.0)),))
  c.train.micro_batches = 1
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key == "steps":
      c.train.steps = int(value)
    else:
      raise ValueError(f"unknown config argument {key!r}; known: steps")
  return c
