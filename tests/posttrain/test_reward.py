"""Reward model: one-row scoring equals separate rows, the ranked-pair loss, training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llama3_jax.data import conversations
from llama3_jax.data.conversations.prepared import decode_record, encode_record, example_rows
from llama3_jax.model.reward import RewardModel
from llama3_jax.objectives.reward import RewardLoss, ranked_pair_sums, response_rewards
from llama3_jax.sharding import MeshConfig
from llama3_jax.train.setup import setup
from tests.helpers import OPTIMIZER, assert_trees_close
from tests.posttrain.conftest import TINY

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 7 + 5?"}]
ANSWERS = {"edited": "12", "chosen": "It is 12", "rejected": "13"}
SEQ = 128


def rows(tokenizer, responses, layout="shared"):
  pieces = conversations.preference_pieces(tokenizer, PROMPT, responses, layout, reward=True)
  return example_rows([decode_record(encode_record(pieces))], SEQ)


@pytest.fixture(scope="module")
def model():
  return RewardModel(TINY, rngs=nnx.Rngs(5))


def one_row_rewards(model, batch):
  rewards_bt = model(batch["inputs"], batch["segment_ids"], batch["positions"])
  rewards_bs, present = response_rewards(rewards_bt, jnp.asarray(batch["response"]), 4)
  return np.asarray(rewards_bs[0, 1:]), np.asarray(present[0, 1:])


def alone(model, tokenizer, text):
  """The response with the prompt in a row of its own (a plain document)."""
  ids, _ = conversations.encode_chat(tokenizer, PROMPT + [{"role": "assistant", "content": text}])
  return float(model(jnp.asarray(ids[None]))[0, -1])   # read at its last token, <|eot_id|>


@pytest.mark.parametrize("names", [("chosen", "rejected"), ("rejected", "chosen"),
                                   ("edited", "chosen", "rejected"),
                                   ("rejected", "edited", "chosen")])
def test_one_row_equals_separate_rows(tokenizer, model, names):
  batch = rows(tokenizer, {name: ANSWERS[name] for name in names})
  rewards, present = one_row_rewards(model, batch)
  slot = {"chosen": 0, "rejected": 1, "edited": 2}
  for name in names:
    assert present[slot[name]]
    np.testing.assert_allclose(rewards[slot[name]], alone(model, tokenizer, ANSWERS[name]),
                               rtol=1e-5, atol=1e-6)
  assert present.sum() == len(names)


def test_the_loss_is_the_mean_of_the_ranked_pairs():
  r = np.zeros((1, 4), np.float32)
  r[0, 1:] = [0.5, -1.0, 2.0]                     # chosen, rejected, edited
  present = np.ones((1, 4), bool)
  loss, count, metrics = ranked_pair_sums(jnp.asarray(r), jnp.asarray(present))
  nl = lambda d: -math.log(1 / (1 + math.exp(-d)))
  expected = np.mean([nl(2.0 - 0.5), nl(2.0 + 1.0), nl(0.5 + 1.0)])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(count) == 1 and float(metrics["pair_accuracy"]) == 1
  # A pair in the wrong order raises the loss.
  swapped = r.copy()
  swapped[0, 1], swapped[0, 2] = r[0, 2], r[0, 1]
  assert float(ranked_pair_sums(jnp.asarray(swapped), jnp.asarray(present))[0]) > float(loss)
  two = present.copy()
  two[0, 3] = False                                 # no edited answer: one pair only
  np.testing.assert_allclose(float(ranked_pair_sums(jnp.asarray(r), jnp.asarray(two))[0]),
                             nl(1.5), rtol=1e-6)


def test_reward_model_learns_and_starts_from_a_pretrained_backbone(tokenizer):
  s = setup(TINY, MeshConfig(fsdp=2, tensor=2), optimizer=OPTIMIZER,
            objective=RewardLoss(max_examples_per_row=1), devices=jax.devices()[:4])
  from llama3_jax.model import Transformer
  pretrained = nnx.state(Transformer(TINY, rngs=nnx.Rngs(11)))
  state = s.init_state(pretrained=pretrained)
  backbone = jax.device_get(state["model"]["backbone"])
  assert_trees_close(backbone, jax.device_get(pretrained))
  batch = {k: np.repeat(v, 4, axis=0) for k, v in rows(tokenizer, ANSWERS).items()}
  losses = []
  for _ in range(5):
    state, metrics = s.fns.train(state, batch, 1e-2)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]


@pytest.mark.slow
def test_packed_shuffled_rows_score_each_response_as_alone(tokenizer, tokenizer_path, model,
                                                           tmp_path):
  import json
  from llama3_jax.optim.schedules import Stage
  from llama3_jax.data.conversations.prepared import ConversationSource, prepare_conversations
  questions = [f"What is {i} + {i}?" for i in range(6)]
  path = tmp_path / "prefs.jsonl"
  path.write_text("".join(json.dumps({
      "messages": [PROMPT[0], {"role": "user", "content": q}], "edited": str(2 * i),
      "chosen": f"It is {2 * i}", "rejected": str(2 * i + 1)}) + "\n"
      for i, q in enumerate(questions)))
  prepare_conversations(path, tokenizer_path, tmp_path / "data", kind="preference",
                        max_tokens=SEQ, reward=True)
  source = ConversationSource(tmp_path / "data", seed=0, vocab_size=512, max_examples_per_row=4)
  batch = source.read(1, 0, Stage(until_tokens=None, batch_tokens=2 * SEQ, seq_len=SEQ), (0, 2))
  assert (batch["response"].max(axis=1) > 3).all()   # several examples in each row
  rewards_bt = model(batch["inputs"], batch["segment_ids"], batch["positions"])
  rewards, present = map(np.asarray, response_rewards(rewards_bt, jnp.asarray(batch["response"]),
                                                      13))
  checked = 0
  for b in range(2):
    for slot in np.flatnonzero(present[b, 1:]) + 1:   # slot 0: not a response
      # which example and response: decode the response's tokens from the row
      tokens = batch["targets"][b][(batch["response"][b] == slot) & (batch["loss_mask"][b] > 0)]
      answer = tokenizer.decode(tokens.tolist()).strip()
      start = np.flatnonzero(batch["response"][b] == slot)[0]
      context = tokenizer.decode(batch["inputs"][b][:start].tolist())
      question = max(questions, key=context.rfind)   # this example's: the last in the row
      ids, _ = conversations.encode_chat(tokenizer, [PROMPT[0], {"role": "user",
                                                                 "content": question},
                                                     {"role": "assistant", "content": answer}])
      expected = float(model(jnp.asarray(ids[None]))[0, -1])
      np.testing.assert_allclose(rewards[b, slot], expected, rtol=1e-5, atol=1e-6)
      checked += 1
  assert checked >= 6


def test_score_responses_equals_each_response_alone(tokenizer, model):
  from llama3_jax.posttrain.reward import score_responses
  texts = [ANSWERS["chosen"], ANSWERS["rejected"], ANSWERS["edited"], "twelve", "12 or 13"]
  prompts = [PROMPT, PROMPT[1:]]
  together = score_responses(model, tokenizer, prompts, [texts, texts[:2]], rows=4)
  # Rows too short for all five responses with their prompt: the responses split over rows.
  split = score_responses(model, tokenizer, prompts, [texts, texts[:2]], seq_len=72, rows=4)
  for p, messages in enumerate(prompts):
    for i, text in enumerate([texts, texts[:2]][p]):
      ids, _ = conversations.encode_chat(tokenizer, messages + [{"role": "assistant",
                                                                 "content": text}])
      alone_reward = float(model(jnp.asarray(ids[None]))[0, -1])
      np.testing.assert_allclose(together[p][i], alone_reward, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(split[p][i], alone_reward, rtol=1e-5, atol=1e-6)


def test_pairwise_accuracy_counts_the_pairs_the_reward_orders(tokenizer, model):
  from llama3_jax.posttrain.reward import pairwise_accuracy, score_responses
  examples = [{"messages": PROMPT, "chosen": a, "rejected": b}
              for a, b in (("12", "13"), ("13", "12"), ("It is 12", "11"))]
  rewards = score_responses(model, tokenizer, [e["messages"] for e in examples],
                            [[e["chosen"], e["rejected"]] for e in examples])
  report = pairwise_accuracy(model, tokenizer, examples)
  expected = np.mean([r[0] > r[1] for r in rewards])
  assert report["rm_accuracy"] == expected and report["n"] == 3
  np.testing.assert_allclose(report["reward_margin"], np.mean([r[0] - r[1] for r in rewards]),
                             rtol=1e-6)


@pytest.mark.slow
def test_exported_reward_model_equals_transformers_and_reads_back(tokenizer, model, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from llama3_jax.checkpoint import hf
  hf.save(model, TINY, tmp_path / "rm", tokenizer=tokenizer)
  torch_model = transformers.LlamaForSequenceClassification.from_pretrained(
      tmp_path / "rm", torch_dtype=torch.float32)
  for text in ANSWERS.values():
    ids, _ = conversations.encode_chat(tokenizer, PROMPT + [{"role": "assistant",
                                                             "content": text}])
    with torch.no_grad():
      theirs = float(torch_model(torch.tensor(ids[None].astype(np.int64))).logits[0, 0])
    np.testing.assert_allclose(theirs, alone(model, tokenizer, text), rtol=1e-5, atol=1e-6)
  _, back = hf.load(tmp_path / "rm")
  assert isinstance(back, RewardModel)
  np.testing.assert_array_equal(np.asarray(back.head_d[...]), np.asarray(model.head_d[...]))
  ids, _ = conversations.encode_chat(tokenizer, PROMPT + [{"role": "assistant",
                                                           "content": "12"}])
  np.testing.assert_allclose(float(back(jnp.asarray(ids[None]))[0, -1]),
                             alone(model, tokenizer, "12"), rtol=1e-6)
