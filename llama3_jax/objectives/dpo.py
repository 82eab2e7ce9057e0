"""Direct preference optimisation as Llama 3 ran it (report §4.1.4): an objective of the one loop.

    objective = DPOLoss(beta=0.1, nll_weight=0.2)
    summary = train(run, workdir, objective=objective, source=ConversationSource(...))

Per preference pair, with policy log-probs pi and reference log-probs ref of the chosen (c) and
rejected (r) responses, summed over their content tokens (headers and `<|eot_id|>` are format
tokens, masked out of both, llama3_jax/data/conversations/__init__.py):

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))  +  nll_weight * -pi_c / |c|

The second term is the NLL of the chosen response normalised by its length (Pang et al. 2024),
which keeps the chosen log-probs from falling with the rejected ones. The reference is the
starting model, frozen in the train state (`init_frozen`) and run in the same step on the same
rows, or its log-probs computed once and stored with the data (`reference="precomputed"`).
The loss is a mean over the pairs of the whole global batch (the step divides by the pair
count), so micro-batches and meshes do not change it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from llama3_jax.data.conversations import LAYOUTS
from llama3_jax.data.conversations.prepared import CONVERSATION_FIELDS
from llama3_jax.model.transformer import Transformer
from llama3_jax.objectives.next_token import token_nll
from llama3_jax.objectives.protocol import Objective


def response_sums(model, batch, *, slots: int):
  """(log-prob sums, token counts) per response slot, [B, slots]: slot 3k-2 is example k's
  chosen response, 3k-1 its rejected, 3k its edited one (data/conversations/prepared.py)."""
  return _slot_sums(token_logps(model, batch), batch, slots)


def token_logps(model, batch):
  """[B, T] fp32: the log-probability of each target."""
  logits_btv = model(batch["inputs"], batch["segment_ids"], batch["positions"],
                     batch.get("indices"))
  return -token_nll(logits_btv, batch["targets"])


def _slot_sums(logp_bt, batch, slots: int):
  weight_bt = batch["loss_mask"]
  one_hot_bts = jax.nn.one_hot(batch["response"], slots, dtype=jnp.float32)
  return (jnp.einsum("bt,bts->bs", logp_bt * weight_bt, one_hot_bts),
          jnp.einsum("bt,bts->bs", weight_bt, one_hot_bts))


REFERENCES = ("in_step", "precomputed")


@dataclasses.dataclass(frozen=True)
class DPOLoss(Objective):
  """DPO's settings, the run config's `dpo` section (llama3_jax/train/config.py), and its loss."""
  beta: float = 0.1
  nll_weight: float = 0.2          # x the chosen response's length-normalised NLL
  max_examples_per_row: int = 16   # preference pairs packed into one row at most
  # "shared": a pair's prompt once per row, both answers attending to it; "separate": prompt +
  # answer as two documents (llama3_jax/data/conversations/__init__.py). The same loss.
  layout: str = "shared"
  # "in_step": the frozen reference model runs in every step; "precomputed": its log-probs are
  # computed once before training and stored with the data (`reference_logp`,
  # llama3_jax/data/conversations/prepared.py: add_reference_logps), so a step runs one model.
  reference: str = "in_step"

  def __post_init__(self):
    problems = []
    if not self.beta > 0:
      problems.append(f"dpo.beta={self.beta} must be > 0")
    if self.nll_weight < 0:
      problems.append(f"dpo.nll_weight={self.nll_weight} must be >= 0")
    if self.max_examples_per_row < 1:
      problems.append(f"dpo.max_examples_per_row={self.max_examples_per_row} must be >= 1")
    if self.layout not in LAYOUTS:
      problems.append(f"dpo.layout={self.layout!r}: use shared or separate")
    if self.reference not in REFERENCES:
      problems.append(f"dpo.reference={self.reference!r}: use in_step or precomputed")
    if problems:
      raise ValueError("; ".join(problems))

  @property
  def slots(self) -> int:
    return 3 * self.max_examples_per_row + 1

  @property
  def fields(self) -> dict:
    return (CONVERSATION_FIELDS if self.reference == "in_step"
            else {**CONVERSATION_FIELDS, "reference_logp": np.float32})

  def init_frozen(self, model_config, rngs) -> Transformer | None:
    """The reference: the same model, set to the starting parameters (Setup.init_state)."""
    return Transformer(model_config, rngs=rngs) if self.reference == "in_step" else None

  def loss_sums(self, model, batch, frozen=None):
    policy, count = _slot_sums(token_logps(model, batch), batch, self.slots)
    if self.reference == "precomputed":
      reference, _ = _slot_sums(batch["reference_logp"], batch, self.slots)
    elif frozen is None:
      raise ValueError("DPO needs the reference model in the train state (init_frozen)")
    else:
      reference, _ = _slot_sums(token_logps(frozen, batch), batch, self.slots)
    reference = jax.lax.stop_gradient(reference)
    return pair_loss_sums(policy, reference, count, self.beta, self.nll_weight)


def pair_loss_sums(policy_bs, reference_bs, count_bs, beta: float, nll_weight: float):
  """The DPO loss summed over the pairs of [B, slots] response sums; the pair count; metrics."""
  chosen, rejected = slice(1, None, 3), slice(2, None, 3)
  n = min(policy_bs[:, chosen].shape[1], policy_bs[:, rejected].shape[1])
  pick = lambda x, s: x[:, s][:, :n]
  pi_c, pi_r = pick(policy_bs, chosen), pick(policy_bs, rejected)
  ref_c, ref_r = pick(reference_bs, chosen), pick(reference_bs, rejected)
  n_c, n_r = pick(count_bs, chosen), pick(count_bs, rejected)
  valid = ((n_c > 0) & (n_r > 0)).astype(jnp.float32)
  margin = beta * ((pi_c - ref_c) - (pi_r - ref_r))
  nll = -pi_c / jnp.maximum(n_c, 1.0)
  loss = -jax.nn.log_sigmoid(margin) + nll_weight * nll
  total = lambda x: (x * valid).sum()
  metrics = {"reward_margin": total(margin), "preference_accuracy": total(margin > 0),
             "chosen_logp": total(pi_c), "rejected_logp": total(pi_r), "chosen_nll": total(nll)}
  return total(loss), valid.sum(), metrics
