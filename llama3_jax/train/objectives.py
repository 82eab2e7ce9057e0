"""Training objectives: what the one train step minimises, and what it needs to do so.

An objective is a small object with
  fields      the batch fields it reads, name -> dtype (llama3_jax/data/batches.py builds and
              checks batches, and the abstract batch for compiling ahead, from it);
  init_model  (model_config, rngs) -> the nnx.Module it trains (an LM head, later a reward
              head);
  init_frozen (optional) (model_config, rngs) -> a module the loss reads but does not train
              (DPO's reference model); it starts as a copy of the pretrained model;
  loss_sums   (model, batch, frozen) -> (loss_sum, weight_sum, metric_sums): sums over the
              batch's rows. The step adds them over micro-batches and divides by the weight of
              the whole global batch, so micro-batching, data and context parallelism all give
              the same loss and gradients. Each metric is a sum reported divided by the same
              weight. `frozen`: the init_frozen module, or None. The model comes with the
              mesh's parallelism installed (llama3_jax/parallel/parallelize.py): just call it.

Pre-training's next-token cross-entropy is the first, and supervised fine-tuning is the same
objective on conversation rows whose weights select the assistant's tokens
(llama3_jax/posttrain/data.py). DPO (llama3_jax/posttrain/dpo.py) and the reward model are
further objectives of the same loop (llama3_jax/train/loop.py), not new loops.
"""

import jax.numpy as jnp
import optax

from llama3_jax.data.batches import LM_FIELDS
from llama3_jax.model import Transformer
from llama3_jax.model.layers import constrain_as_logit_rows


def token_nll(logits_btv, targets_bt):
  """[B, T] fp32: the negative log-likelihood of each target (the targets laid out as the
  logits' rows, so XLA never moves the logits' cotangent to the batch's layout instead)."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits_btv, constrain_as_logit_rows(targets_bt))


class NextTokenLoss:
  """Cross-entropy of the next token, weighted by `loss_mask` (0 for padding and for the last
  token of each document, whose next token belongs to another)."""
  fields = LM_FIELDS

  def init_model(self, model_config, rngs) -> Transformer:
    return Transformer(model_config, rngs=rngs)

  def loss_sums(self, model, batch, frozen=None):
    logits_btv = model(batch["inputs"], batch.get("segment_ids"), batch.get("positions"),
                       batch.get("indices"))
    ce_bt = token_nll(logits_btv, batch["targets"])
    mask_bt = batch.get("loss_mask", jnp.ones_like(ce_bt)).astype(jnp.float32)
    return (ce_bt * mask_bt).sum(), mask_bt.sum(), {}


NEXT_TOKEN = NextTokenLoss()
