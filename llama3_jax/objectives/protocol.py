"""What an objective is: everything the one train step and loop ask of one.

    class MyLoss(Objective):
      fields = LM_FIELDS
      def loss_sums(self, model, batch, frozen=None): ...

`fields`      the batch fields it reads, name -> dtype (llama3_jax/data/batches.py builds and
              checks batches, and the abstract batch for compiling ahead, from it);
`model_kind`  what its checkpoints hold: "lm" (a Transformer) or "reward" (a RewardModel),
              recorded in each checkpoint's meta so that loaders build the right module;
`init_model`  (model_config, rngs) -> the nnx.Module it trains;
`init_frozen` (model_config, rngs) -> a module the loss reads but does not train (DPO's
              reference model), or None; it starts as a copy of the pretrained model;
`load_pretrained` (model, params) puts a pretrained model's parameters into `model` (a reward
              model takes its backbone's and keeps a new head);
`loss_sums`   (model, batch, frozen) -> (loss_sum, weight_sum, metric_sums): sums over the
              batch's rows. The step adds them over micro-batches and divides by the weight of
              the whole global batch, so micro-batching, data and context parallelism all give
              the same loss and gradients. Each metric is a sum reported divided by the same
              weight. `frozen`: the init_frozen module, or None. The model comes with the
              mesh's parallelism installed (llama3_jax/parallel/parallelize.py): just call it.
"""

from typing import Protocol

from flax import nnx

from llama3_jax.model.transformer import Transformer


class Objective(Protocol):
  """The defaults are a language model's; an objective overrides what differs."""
  fields: dict
  model_kind: str = "lm"

  def init_model(self, model_config, rngs) -> nnx.Module:
    return Transformer(model_config, rngs=rngs)

  def init_frozen(self, model_config, rngs) -> nnx.Module | None:
    return None

  def load_pretrained(self, model, params) -> None:
    nnx.update(model, params)

  def loss_sums(self, model, batch, frozen=None) -> tuple:
    ...
