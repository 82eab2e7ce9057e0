"""The reward model of Llama 3 (report §4.1.2): an objective of the one loop.

    objective = RewardLoss()
    summary = train(cfg, workdir, objective=objective)       # preference rows, reward=True

The model is the Llama backbone with a scalar head in place of the LM head (`RewardModel`),
started from a pre-trained or SFT model (its backbone). A response's reward is read at its last
token, `<|eot_id|>`. The prompt and all its responses share one row (the shared layout of
llama3_jax/posttrain/conversations.py: each response attends to the prompt and to itself,
positions continuing after the prompt), so the prompt is encoded once. The loss is the Llama 2
objective without the margin, -log sigmoid(r_better - r_worse), averaged over every ranked pair
of an example (edited > chosen > rejected: 1 or 3 pairs), then over the examples of the batch.

    rewards = score_responses(model, tokenizer, [messages], [["12", "13", "It is 12"]])
    report = pairwise_accuracy(model, tokenizer, heldout_examples)   # held-out pairs

score the responses of a prompt the same way: the prompt once, then every response in the same
row (rows of a fixed shape, so the scores do not depend on how many prompts come together).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llama3_jax.model import Transformer
from llama3_jax.model.layers import param
from llama3_jax.posttrain import conversations
from llama3_jax.posttrain.data import (CONVERSATION_FIELDS, decode_record, encode_record,
                                       example_rows)
from llama3_jax.posttrain.task import interval

# (better, worse) slot offsets within an example's three slots: chosen 0, rejected 1, edited 2
PAIRS = ((2, 0), (2, 1), (0, 1))


class RewardModel(nnx.Module):
  """Transformer backbone, final norm, then a scalar head [D]: one reward per position."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    self.config = config
    self.backbone = Transformer(config, rngs=rngs)
    self.head_d = param(rngs, nnx.initializers.normal(config.init_std), (config.d_model,),
                        ("embed",), jnp.dtype(config.param_dtype))

  def __call__(self, tokens_bt, segment_ids=None, positions=None, indices=None):
    """[B, T] fp32 rewards, one per position."""
    h_btd = self.backbone(tokens_bt, segment_ids, positions, indices, hidden=True)
    return jnp.einsum("btd,d->bt", h_btd.astype(jnp.float32), self.head_d[...].astype(
        jnp.float32))


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


class RewardLoss:
  fields = CONVERSATION_FIELDS
  model_kind = "reward"   # recorded in checkpoints: they hold a RewardModel

  def __init__(self, max_examples_per_row: int = 16):
    self.slots = 3 * max_examples_per_row + 1

  def init_model(self, model_config, rngs) -> RewardModel:
    return RewardModel(model_config, rngs=rngs)

  def load_pretrained(self, model: RewardModel, params) -> None:
    nnx.update(model.backbone, params)   # the head stays new

  def loss_sums(self, model, batch, frozen=None):
    rewards_bt = model(batch["inputs"], batch["segment_ids"], batch["positions"],
                       batch.get("indices"))
    rewards_bs, present_bs = response_rewards(rewards_bt, batch["response"], self.slots)
    return ranked_pair_sums(rewards_bs, present_bs)


def _response_rows(tokenizer, messages, responses, seq_len):
  """(response indices, record) for rows holding the prompt and its responses (slots 1, 2, ...
  in each row); as few rows as fit `seq_len`."""
  records, group = [], []

  def record(ids):
    return decode_record(encode_record(conversations.preference_pieces(
        tokenizer, messages, {slot: responses[i] for slot, i in enumerate(ids, start=1)},
        "shared", reward=True)))

  for i in range(len(responses)):
    trial = record(group + [i])
    if trial["inputs"].size <= seq_len:
      group.append(i)
      continue
    if not group:
      raise ValueError(f"a response of {trial['inputs'].size} tokens with its prompt does not "
                       f"fit seq_len={seq_len}; raise seq_len or shorten the prompt")
    records.append((group, record(group)))
    group = [i]
  records.append((group, record(group)))
  return records


def score_responses(model, tokenizer, prompts, responses, *, seq_len: int = 256,
                    rows: int = 8) -> list[np.ndarray]:
  """The reward of each response: prompts[i] (messages) with responses[i] (texts) -> float32
  [len(responses[i])] per prompt. A prompt and its responses share a row (several if they do
  not fit `seq_len`); batches are `rows` x `seq_len`, padded, so one program serves all."""
  seq_len = min(seq_len, model.config.max_seq_len)
  work = []   # (prompt index, response indices, record)
  for p, (messages, texts) in enumerate(zip(prompts, responses)):
    if not texts:
      raise ValueError(f"prompt {p} has no responses to score")
    work += [(p, group, rec) for group, rec in _response_rows(tokenizer, messages, texts,
                                                               seq_len)]
  out = [np.zeros(len(texts), np.float32) for texts in responses]
  for start in range(0, len(work), rows):
    chunk = work[start:start + rows]
    records = [rec for _, _, rec in chunk]
    batch = example_rows(records + [records[-1]] * (rows - len(records)), seq_len)
    rewards_bt = np.asarray(_rewards(model, batch["inputs"], batch["segment_ids"],
                                     batch["positions"]))
    for b, (p, group, _) in enumerate(chunk):
      for slot, i in enumerate(group, start=1):
        last = np.flatnonzero(batch["response"][b] == slot)[-1]   # its <|eot_id|> input
        out[p][i] = rewards_bt[b, last]
  return out


@nnx.jit
def _rewards(model, tokens_bt, segment_bt, positions_bt):
  return model(tokens_bt, segment_bt, positions_bt)


def pairwise_accuracy(model, tokenizer, examples, *, seq_len: int = 256) -> dict:
  """On held-out preference examples (messages, chosen, rejected): the share whose chosen
  answer gets the higher reward, with its 95% interval, and the mean margin."""
  rewards = score_responses(model, tokenizer, [e["messages"] for e in examples],
                            [[e["chosen"], e["rejected"]] for e in examples], seq_len=seq_len)
  margins = np.array([r[0] - r[1] for r in rewards])
  accuracy = float(np.mean(margins > 0))
  return {"rm_accuracy": accuracy, "rm_accuracy_ci": interval(accuracy, len(margins)),
          "reward_margin": float(margins.mean()), "n": len(margins)}
