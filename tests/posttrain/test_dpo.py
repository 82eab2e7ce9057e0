"""DPO: the formula's known values, ln 2 at the start, masks, shared vs separate rows, torch."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from llama3_jax.data import conversations
from llama3_jax.data.conversations.prepared import decode_record, encode_record, example_rows
from llama3_jax.objectives.dpo import DPOLoss, pair_loss_sums
from llama3_jax.sharding import MeshConfig
from llama3_jax.train.setup import setup
from tests.helpers import OPTIMIZER, RTOL, assert_trees_close
from tests.posttrain.conftest import TINY

PAIRS = [([{"role": "system", "content": "Answer with the number only."},
           {"role": "user", "content": "What is 12 + 9?"}], "21", "22"),
         ([{"role": "user", "content": "Compute 7 - 3."}], "4", "14"),
         ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
           {"role": "user", "content": "Say a long word"}], "antidisestablishment", "no")]
SEQ = 160


def batch_of(tokenizer, layout: str, pairs=PAIRS, edit=None):
  records = []
  for messages, chosen, rejected in pairs:
    pieces = conversations.preference_pieces(tokenizer, messages,
                                             {"chosen": chosen, "rejected": rejected}, layout)
    records.append(decode_record(encode_record(pieces)))
  batch = example_rows(records, SEQ)
  if edit:
    edit(batch)
  return batch


def make(mesh=MeshConfig(fsdp=1), devices=1, **dpo):
  return setup(TINY, mesh, optimizer=OPTIMIZER, objective=DPOLoss(**dpo),
               devices=jax.devices()[:devices])


def test_known_values():
  # policy-minus-reference log-ratio differences 0, 10, 20 with beta 0.1
  policy = np.zeros((3, 4), np.float32)
  policy[:, 1] = [0.0, 10.0, 20.0]
  count = np.ones((3, 4), np.float32)
  loss, pairs, _ = pair_loss_sums(policy, np.zeros_like(policy), count, 0.1, 0.0)
  expected = -np.log(1 / (1 + np.exp(-np.array([0.0, 1.0, 2.0]))))
  np.testing.assert_allclose(expected, [0.6931, 0.3133, 0.1269], atol=1e-4)
  np.testing.assert_allclose(float(loss), expected.sum(), rtol=1e-6)
  assert float(pairs) == 3


def test_first_loss_is_ln2_when_policy_is_reference(tokenizer):
  s = make(nll_weight=0.0)
  start = s.init_state()
  model = nnx.merge(s.graphdef, start).model
  state = s.init_state(pretrained=nnx.state(model))   # policy and reference the same model
  loss, _ = s.fns.loss_and_grads(state, batch_of(tokenizer, "shared"))
  np.testing.assert_allclose(float(loss), math.log(2), rtol=1e-6)
  # A random reference differs from the policy: then it is not ln 2.
  loss, _ = s.fns.loss_and_grads(start, batch_of(tokenizer, "shared"))
  assert abs(float(loss) - math.log(2)) > 1e-3


def test_shared_prompt_rows_equal_separate_rows(tokenizer):
  s = make()
  state = s.init_state()
  shared = jax.device_get(s.fns.loss_and_grads(state, batch_of(tokenizer, "shared")))
  separate = jax.device_get(s.fns.loss_and_grads(state, batch_of(tokenizer, "separate")))
  np.testing.assert_allclose(shared[0], separate[0], rtol=RTOL)
  assert_trees_close(shared[1], separate[1])
  # The shared layout is shorter: the prompt is encoded once.
  tokens = lambda layout: (batch_of(tokenizer, layout)["segment_ids"] > 0).sum()
  assert tokens("shared") < tokens("separate")


@pytest.mark.slow   # the fast core: ln 2 at the start
def test_format_tokens_do_not_change_the_loss(tokenizer):
  s = make()
  state = s.init_state()
  eot = tokenizer.special_id("<|eot_id|>")

  def swap_chosen_eot(batch):   # the chosen response's <|eot_id|>: another token
    chosen_eot = (batch["response"] % 3 == 1) & (batch["targets"] == eot)
    assert chosen_eot.sum() == len(PAIRS)
    batch["targets"][chosen_eot] = 7

  def swap_chosen_content(batch):
    first = np.argmax((batch["response"] % 3 == 1) & (batch["loss_mask"] > 0), axis=1)
    batch["targets"][np.arange(len(PAIRS)), first] = 7

  loss = lambda edit=None: float(s.fns.loss_and_grads(
      state, batch_of(tokenizer, "shared", edit=edit))[0])
  base = loss()
  assert loss(swap_chosen_eot) == pytest.approx(base, rel=1e-7)
  assert abs(loss(swap_chosen_content) - base) > 1e-4   # the check can fail


@pytest.mark.slow
def test_sharded_and_micro_batched_equal_one_device(tokenizer):
  batch = batch_of(tokenizer, "shared", pairs=PAIRS * 3 + PAIRS[:1] * 3)  # 12 rows
  one = make()
  state = one.init_state()
  reference = jax.device_get(one.fns.loss_and_grads(state, batch))
  for mesh, micro in ((MeshConfig(fsdp=2, tensor=2), 1), (MeshConfig(fsdp=4), 3)):
    s = setup(TINY, mesh, optimizer=OPTIMIZER, objective=DPOLoss(), micro_batches=micro,
              devices=jax.devices()[:4])
    placed = jax.device_put(jax.device_get(state), s.shardings)
    loss, grads = jax.device_get(s.fns.loss_and_grads(placed, batch))
    np.testing.assert_allclose(loss, reference[0], rtol=RTOL)
    assert_trees_close(grads, reference[1])


@pytest.mark.slow
def test_loss_equals_torch_on_the_exported_models(tokenizer, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from llama3_jax.checkpoint import hf
  s = make()
  state = s.init_state()   # a random policy and another random reference
  train_state = nnx.merge(s.graphdef, state)
  loss, _ = s.fns.loss_and_grads(state, batch_of(tokenizer, "shared"))
  logps = {}
  for name, module in (("policy", train_state.model), ("reference", train_state.frozen)):
    hf.save(module, TINY, tmp_path / name)
    torch_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / name,
                                                                torch_dtype=torch.float32)
    logps[name] = []
    for messages, chosen, rejected in PAIRS:
      sums = []
      for answer in (chosen, rejected):
        (piece,) = conversations.preference_pieces(
            tokenizer, messages, {"chosen": answer}, "separate")
        ids = torch.tensor(np.r_[piece.inputs, piece.targets[-1:]][None].astype(np.int64))
        with torch.no_grad():
          logits = torch_model(ids).logits[0, :-1].double()
        token_logp = torch.log_softmax(logits, -1).gather(
            1, torch.tensor(piece.targets.astype(np.int64))[:, None])[:, 0]
        weights = torch.tensor(piece.weights, dtype=torch.float64)
        sums.append(((token_logp * weights).sum(), weights.sum()))
      logps[name].append(sums)
  losses = []
  for (policy_pair, reference_pair) in zip(logps["policy"], logps["reference"]):
    (pc, nc), (pr, _) = policy_pair
    (rc, _), (rr, _) = reference_pair
    margin = 0.1 * ((pc - rc) - (pr - rr))
    losses.append(-torch.nn.functional.logsigmoid(margin) + 0.2 * (-pc / nc))
  np.testing.assert_allclose(float(loss), float(torch.stack(losses).mean()), rtol=1e-5)


@pytest.mark.slow   # ~10 s: two DPO runs
def test_precomputed_reference_equals_the_in_step_reference(tokenizer, tokenizer_path, tmp_path):
  import json
  from llama3_jax.optim.schedules import Stage
  from llama3_jax.data.conversations.prepared import (ConversationSource, add_reference_logps,
                                         prepare_conversations)
  from llama3_jax.objectives.dpo import token_logps
  path = tmp_path / "p.jsonl"
  path.write_text("".join(json.dumps({"messages": m, "chosen": c, "rejected": r}) + "\n"
                          for m, c, r in PAIRS * 4))
  prepare_conversations(path, tokenizer_path, tmp_path / "data", kind="preference",
                        max_tokens=SEQ)
  in_step = make()
  state = in_step.init_state()
  train_state = nnx.merge(in_step.graphdef, state)
  logps = nnx.jit(token_logps)
  add_reference_logps(tmp_path / "data", tmp_path / "ref",
                      lambda batch: logps(train_state.frozen, batch), model_path="random")
  stage = Stage(until_tokens=None, batch_tokens=4 * SEQ, seq_len=SEQ)
  batch = ConversationSource(tmp_path / "ref", seed=0, vocab_size=512).read(1, 0, stage, (0, 4))
  assert (batch["response"].max(axis=1) > 3).any()   # packed: several pairs in a row
  precomputed = make(reference="precomputed")
  p_state = precomputed.init_state(pretrained=nnx.state(train_state.model))
  loss, grads = jax.device_get(in_step.fns.loss_and_grads(
      state, {k: v for k, v in batch.items() if k != "reference_logp"}))
  loss_p, grads_p = jax.device_get(precomputed.fns.loss_and_grads(p_state, batch))
  np.testing.assert_allclose(loss_p, loss, rtol=RTOL)
  assert_trees_close(grads_p, grads)
  assert nnx.merge(precomputed.graphdef, p_state).frozen is None   # one model per step
