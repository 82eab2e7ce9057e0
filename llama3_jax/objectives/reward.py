"""The reward model's objective (report §4.1.2): an objective of the one loop.

    objective = RewardLoss(max_examples_per_row=16)
    summary = train(run, workdir, objective=objective)       # preference rows, reward=True

The model (llama3_jax/model/reward.py) starts from a pre-trained or SFT model (its backbone).
A response's reward is read at its last token, `<|eot_id|>`. The prompt and all its responses
share one row (the shared layout of llama3_jax/data/conversations/: each response attends to
the prompt and to itself, positions continuing after the prompt), so the prompt is encoded once.
The loss is the Llama 2 objective without the margin, -log sigmoid(r_better - r_worse),
averaged over every ranked pair of an example (edited > chosen > rejected: 1 or 3 pairs), then
over the examples of the batch.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from llama3_jax.data.conversations.prepared import CONVERSATION_FIELDS
from llama3_jax.model.reward import RewardModel
from llama3_jax.objectives.protocol import Objective

# (better, worse) slot offsets within an example's three slots: chosen 0, rejected 1, edited 2
PAIRS = ((2, 0), (2, 1), (0, 1))


def response_rewards(rewards_bt, response_bt, slots: int):
  """(rewards [B, slots] at each response's last position, present [B, slots] bool)."""
  one_hot_bts = jax.nn.one_hot(response_bt, slots, dtype=jnp.int32)
  t = jnp.arange(response_bt.shape[1], dtype=jnp.int32)
  last_bs = jnp.max(one_hot_bts * (t[None, :, None] + 1), axis=1) - 1   # -1: absent
  present_bs = last_bs >= 0
  rewards_bs = jnp.take_along_axis(rewards_bt, jnp.maximum(last_bs, 0), axis=1)
  return jnp.where(present_bs, rewards_bs, 0.0), present_bs


def ranked_pair_sums(rewards_bs, present_bs):
  """Per example: the mean of -log sigmoid(better - worse) over its ranked pairs. Returns
  (loss sum over examples, example count, metric sums)."""
  B, S = rewards_bs.shape
  k = (S - 1) // 3
  r = rewards_bs[:, 1:1 + 3 * k].reshape(B, k, 3)          # [B, K, (chosen, rejected, edited)]
  p = present_bs[:, 1:1 + 3 * k].reshape(B, k, 3)
  losses, valid, correct, margins = [], [], [], []
  for better, worse in PAIRS:
    ok = (p[..., better] & p[..., worse]).astype(jnp.float32)
    diff = r[..., better] - r[..., worse]
    losses.append(-jax.nn.log_sigmoid(diff) * ok)
    valid.append(ok)
    correct.append((diff > 0) * ok)
    margins.append(diff * ok)
  pairs = sum(valid)                                          # [B, K]: 0, 1 or 3
  example = (pairs > 0).astype(jnp.float32)
  mean = lambda xs: sum(xs) / jnp.maximum(pairs, 1.0)
  total = lambda x: (x * example).sum()
  return (total(mean(losses)), example.sum(),
          {"pair_accuracy": total(mean(correct)), "reward_margin": total(mean(margins))})


@dataclasses.dataclass(frozen=True)
class RewardLoss(Objective):
  max_examples_per_row: int = 16   # examples packed into one row at most (the dpo section's)
  fields = CONVERSATION_FIELDS
  model_kind = "reward"   # recorded in checkpoints: they hold a RewardModel

  @property
  def slots(self) -> int:
    return 3 * self.max_examples_per_row + 1

  def init_model(self, model_config, rngs) -> RewardModel:
    return RewardModel(model_config, rngs=rngs)

  def load_pretrained(self, model: RewardModel, params) -> None:
    nnx.update(model.backbone, params)   # the head stays new

  def loss_sums(self, model, batch, frozen=None):
    rewards_bt = model(batch["inputs"], batch["segment_ids"], batch["positions"],
                       batch.get("indices"))
    rewards_bs, present_bs = response_rewards(rewards_bt, batch["response"], self.slots)
    return ranked_pair_sums(rewards_bs, present_bs)
