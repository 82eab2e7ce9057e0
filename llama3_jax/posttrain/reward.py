"""Scoring with a reward model (llama3_jax/model/reward.py; its objective:
llama3_jax/objectives/reward.py).

    rewards = score_responses(model, tokenizer, [messages], [["12", "13", "It is 12"]])
    report = pairwise_accuracy(model, tokenizer, heldout_examples)   # held-out pairs

The responses of a prompt are scored as the reward model trains: the prompt once, then every
response in the same row, each reward read at the response's `<|eot_id|>` (rows of a fixed
shape, so the scores do not depend on how many prompts come together).
"""

import numpy as np
from flax import nnx

from llama3_jax.data import conversations
from llama3_jax.data.conversations.prepared import decode_record, encode_record, example_rows
from llama3_jax.eval.stats import interval
from llama3_jax.infer.placement import Placement


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
  placement = Placement.of(model)   # on a mesh: rows over its data-like axes
  rows = placement.padded_rows(rows)
  for start in range(0, len(work), rows):
    chunk = work[start:start + rows]
    records = [rec for _, _, rec in chunk]
    batch = example_rows(records + [records[-1]] * (rows - len(records)), seq_len)
    with placement.active():
      rewards_bt = placement.fetch(_rewards(model, *(placement.rows(batch[k]) for k in (
          "inputs", "segment_ids", "positions"))))
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
