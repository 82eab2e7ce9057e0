"""Next-token cross-entropy: pre-training's objective, and SFT's on conversation rows whose
weights select the assistant's tokens (llama3_jax/data/conversations/prepared.py)."""

import jax.numpy as jnp
import optax

from llama3_jax.data.batches import LM_FIELDS
from llama3_jax.model.layers import constrain_as_logit_rows
from llama3_jax.objectives.protocol import Objective


def token_nll(logits_btv, targets_bt):
  """[B, T] fp32: the negative log-likelihood of each target (the targets laid out as the
  logits' rows, so XLA never moves the logits' cotangent to the batch's layout instead)."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits_btv, constrain_as_logit_rows(targets_bt))


class NextTokenLoss(Objective):
  """Cross-entropy of the next token, weighted by `loss_mask` (0 for padding and for the last
  token of each document, whose next token belongs to another)."""
  fields = LM_FIELDS

  def loss_sums(self, model, batch, frozen=None):
    logits_btv = model(batch["inputs"], batch.get("segment_ids"), batch.get("positions"),
                       batch.get("indices"))
    ce_bt = token_nll(logits_btv, batch["targets"])
    mask_bt = batch.get("loss_mask", jnp.ones_like(ce_bt)).astype(jnp.float32)
    return (ce_bt * mask_bt).sum(), mask_bt.sum(), {}


NEXT_TOKEN = NextTokenLoss()
