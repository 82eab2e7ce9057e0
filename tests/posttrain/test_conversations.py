"""Conversation data: masks token by token, packing without leaks, bad input, truncation."""

import json

import numpy as np
import pytest

from llama3_jax.data.conversations.chat import encode_chat
from llama3_jax.model.attention_ops import attention_mask
from llama3_jax.optim.schedules import Stage
from llama3_jax.data import conversations
from llama3_jax.data.conversations.prepared import (ConversationSource, decode_record,
                                                    encode_record, prepare_conversations)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"}]


def _expected_sft_weights(tokenizer, ids):
  """By the format, independently: 1 from after an assistant header's "\\n\\n" up to and
  including the next <|eot_id|>; 0 everywhere else."""
  start, end, eot = (tokenizer.special_id(n) for n in
                     ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
  separator = tokenizer.encode("\n\n")
  weights, i = np.zeros(len(ids), int), 0
  while i < len(ids):
    if ids[i] == start:
      j = list(ids).index(end, i)
      role = tokenizer.decode(ids[i + 1:j]).strip()
      k = j + 1 + len(separator)
      assert list(ids[j + 1:k]) == separator
      stop = list(ids).index(eot, k)
      if role == "assistant":
        weights[k:stop + 1] = 1
      i = stop + 1
    else:
      i += 1
  return weights


def test_sft_weights_are_the_assistant_tokens_and_their_eot(tokenizer):
  (piece,) = conversations.sft_pieces(tokenizer, CHAT)
  ids = np.r_[piece.inputs[:1], piece.targets]
  expected = _expected_sft_weights(tokenizer, ids)
  np.testing.assert_array_equal(piece.weights, expected[1:])
  assert expected.sum() > 0
  # The weighted targets spell the two answers, each closed by <|eot_id|>.
  eot = tokenizer.special_id("<|eot_id|>")
  weighted = piece.targets[piece.weights == 1].tolist()
  assert weighted.count(eot) == 2 and weighted[-1] == eot
  assert tokenizer.decode([t for t in weighted if t != eot]).replace(" ", "") == "Hello!4"


def test_dpo_weights_skip_header_and_eot(tokenizer):
  pieces = conversations.preference_pieces(tokenizer, CHAT[:4], {"chosen": "four",
                                                                 "rejected": "five"})
  eot = tokenizer.special_id("<|eot_id|>")
  prompt, chosen, rejected = pieces
  assert prompt.weights.sum() == 0 and chosen.share == 1 and rejected.share == 2
  for piece, text in ((chosen, "four"), (rejected, "five")):
    assert eot not in piece.targets[piece.weights == 1]
    assert tokenizer.decode(piece.targets[piece.weights == 1].tolist()).strip() == text
    # The response continues the prompt: its first input is the prompt's last token.
    assert piece.inputs[0] == prompt.targets[-1]
    assert piece.positions[0] == prompt.positions[-1] + 1
  full, _ = encode_chat(tokenizer, CHAT[:4] + [{"role": "assistant", "content": "four"}])
  np.testing.assert_array_equal(np.r_[prompt.inputs, chosen.inputs], full[:-1])


def _write(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def _pref(question, chosen, rejected):
  return {"messages": [{"role": "user", "content": question}], "chosen": chosen,
          "rejected": rejected}


BAD = [
    ({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
     "out of order"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
     "empty"),
    ("{not json", "not JSON"),
    ({"conversation": []}, "no 'messages'"),
]


@pytest.mark.parametrize("row, problem", BAD)
def test_bad_sft_examples_are_named_by_line(tmp_path, tokenizer_path, row, problem):
  good = {"messages": CHAT}
  path = _write(tmp_path / "sft.jsonl", [good, row, good])
  with pytest.raises(conversations.ExampleError, match=f"sft.jsonl:2: .*{problem}"):
    prepare_conversations(path, tokenizer_path, tmp_path / "strict", kind="sft",
                          max_tokens=128, strict=True)
  assert not (tmp_path / "strict" / "examples.array_record").exists()
  manifest = prepare_conversations(path, tokenizer_path, tmp_path / "out", kind="sft",
                                   max_tokens=128)
  assert manifest["examples"] == 2 and manifest["skipped"] == {"bad example": 1}
  assert "sft.jsonl:2" in manifest["skipped_examples"][0]


def test_identical_chosen_and_rejected_is_refused(tmp_path, tokenizer_path):
  path = _write(tmp_path / "p.jsonl", [_pref("q?", "same", "same")])
  with pytest.raises(conversations.ExampleError, match="p.jsonl:1: two of the ranked answers"):
    prepare_conversations(path, tokenizer_path, tmp_path / "o", kind="preference",
                          max_tokens=64, strict=True)
  with pytest.raises(ValueError, match="no usable examples"):   # every line skipped
    prepare_conversations(path, tokenizer_path, tmp_path / "o2", kind="preference",
                          max_tokens=64)


def test_long_prompts_are_truncated_from_the_left_or_skipped(tmp_path, tokenizer, tokenizer_path):
  long_question = "word " * 200
  path = _write(tmp_path / "p.jsonl", [_pref(long_question, "yes", "no"), _pref("q?", "a", "b")])
  manifest = prepare_conversations(path, tokenizer_path, tmp_path / "left", kind="preference",
                                   max_tokens=64)
  assert manifest["examples"] == 2 and manifest["truncated"] == 1
  assert manifest["truncated_tokens"] > 0
  manifest = prepare_conversations(path, tokenizer_path, tmp_path / "skip", kind="preference",
                                   max_tokens=64, truncation="skip")
  assert manifest["examples"] == 1 and manifest["skipped"] == {"longer than max_tokens": 1}
  # A truncated example keeps BOS, its answers whole, and fits the row.
  pieces = conversations.preference_pieces(tokenizer, [{"role": "user",
                                                         "content": long_question}],
                                           {"chosen": "yes", "rejected": "no"})
  cut, dropped = conversations.truncate_left(pieces, 64)
  assert sum(p.inputs.size for p in cut) == 64 and dropped > 0
  assert cut[0].inputs[0] == tokenizer.bos_id
  np.testing.assert_array_equal(cut[0].inputs[1:], cut[0].targets[:-1])   # still a sequence
  tail = cut[0].targets.size - 1   # everything after BOS is the prompt's own end
  np.testing.assert_array_equal(cut[0].targets[-tail:], pieces[0].targets[-tail:])
  for before, after in zip(pieces[1:], cut[1:]):
    np.testing.assert_array_equal(after.targets, before.targets)
    assert after.positions[0] == cut[0].positions[-1] + 1


def test_packed_rows_never_attend_across_examples(tmp_path, tokenizer_path):
  rows = [_pref(f"What is {i} + {i}?", str(2 * i), str(2 * i + 1)) for i in range(30)]
  path = _write(tmp_path / "p.jsonl", rows)
  prepare_conversations(path, tokenizer_path, tmp_path / "o", kind="preference", max_tokens=96)
  source = ConversationSource(tmp_path / "o", seed=0, vocab_size=512)
  stage = Stage(until_tokens=None, batch_tokens=8 * 96, seq_len=96)
  batch = source.read(1, 0, stage, (0, 8))
  seg = batch["segment_ids"]
  index = np.broadcast_to(np.arange(96), seg.shape)
  mask = np.asarray(attention_mask(seg, seg, index, index))
  example = np.where(seg > 0, (seg % (1 << 20)) // 4, 0)   # the packer's example number
  assert (example.max(axis=1) > 1).all()                    # rows do pack several examples
  cross = example[:, :, None] != example[:, None, :]
  assert not (mask & cross & (seg[:, :, None] > 0)).any()
  # Chosen and rejected of one example see its prompt, never each other.
  response = batch["response"]
  chosen_q, rejected_k = response[:, :, None] % 3 == 1, response[:, None, :] % 3 == 2
  same = example[:, :, None] == example[:, None, :]
  assert not (mask & chosen_q & rejected_k & same & (response[:, None, :] > 0)).any()
  assert (batch["loss_mask"][response == 0] == 0).all()


def test_records_round_trip(tokenizer):
  pieces = conversations.sft_pieces(tokenizer, CHAT)
  record = decode_record(encode_record(pieces))
  np.testing.assert_array_equal(record["inputs"], pieces[0].inputs)
  np.testing.assert_array_equal(record["weights"], pieces[0].weights)


def test_sft_truncation_keeps_every_answer_token(tokenizer):
  long = [{"role": "user", "content": "word " * 150}, {"role": "assistant", "content": "ok"}]
  (piece,) = conversations.sft_pieces(tokenizer, long)
  (cut,), dropped = conversations.truncate_left([piece], 40)
  assert cut.inputs.size == 40 and dropped == piece.inputs.size - 40
  np.testing.assert_array_equal(cut.targets[cut.weights == 1], piece.targets[piece.weights == 1])
  np.testing.assert_array_equal(cut.inputs[1:], cut.targets[:-1])
  assert conversations.truncate_left([piece], 3) == ([], piece.inputs.size - 3)   # no room
