"""The one door through which parallelism enters the model (torchtitan's `parallelize`).

    install = parallelizer(mesh, rules, ShardingConfig(), micro_batches=4)
    model = install(nnx.merge(graphdef, params))   # in the traced step, before the loss
    loss_sum, weight_sum, metrics = objective.loss_sums(model, batch)

FSDP, tensor and data parallelism need nothing here: they are the shardings of parameters and
activations (llama3_jax/sharding/rules.py), which XLA's SPMD partitioner follows. The two axes
that change what a layer runs are installed in every `Transformer` of the module (a reward
model's backbone, DPO's frozen reference too), through its two seams:
- `stage` > 1: `block_runner` = the pipeline over the stacked blocks (parallel/pipeline.py),
  which takes the micro-batches, so the step does not accumulate over them;
- `context` > 1: `attention_kernel` = attention under shard_map over the context axis
  (parallel/context.py).
Objectives and the model's code never name an axis. A new parallelism is a rules table plus a
module here, installed by this function.
"""

from flax import nnx

from llama3_jax.model.transformer import Transformer
from llama3_jax.parallel import context as context_parallel
from llama3_jax.parallel import pipeline


def parallelizer(mesh, rules, config, micro_batches=1):
  """(module -> the same module with the mesh's block runner and attention kernel installed).

  `config`: a ShardingConfig (pipeline_repeats, context_schedule). `micro_batches`: a count,
  or (rows, seq_len) -> count for a batch of that shape (a run whose stages differ in it).
  """
  runner = None
  if mesh.shape["stage"] > 1:
    runner = pipeline.pipelined_blocks(mesh.shape["stage"], config.pipeline_repeats,
                                       micro_batches, mesh_shape=dict(mesh.shape),
                                       weights_gathered=config.fsdp_mode == "llama3")
  kernel = context_parallel.context_kernel(mesh, rules, config.context_schedule)

  def install(module):
    for _, sub in nnx.iter_modules(module):
      if isinstance(sub, Transformer):
        sub.block_runner, sub.attention_kernel = runner, kernel
    return module

  return install


def micro_batch_count(micro_batches, rows: int, seq_len: int) -> int:
  """A batch's micro-batches: `micro_batches` itself, or its answer for the batch's shape."""
  return micro_batches(rows, seq_len) if callable(micro_batches) else micro_batches


def accumulated_micro_batches(mesh, micro_batches: int) -> int:
  """Micro-batches the step accumulates gradients over itself: all of them, unless a pipeline
  runs them."""
  return 1 if mesh.shape["stage"] > 1 else micro_batches
