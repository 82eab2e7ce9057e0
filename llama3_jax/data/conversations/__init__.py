"""Conversation files for post-training: reading, checking, and encoding into weighted pieces.

    for line, example in read_examples("sft.jsonl", "sft"):   # or an ExampleError (file:line)
      pieces = sft_pieces(tokenizer, example["messages"])
    pieces = preference_pieces(tokenizer, prompt_messages, chosen, rejected, layout="shared")

Files are JSONL, one example per line:
  sft          {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  preference   {"messages": [...prompt turns, ending with the user's...], "chosen": str,
               "rejected": str, "edited": str (optional: ranks above chosen)}

An example becomes pieces: runs of next-token (input, target) pairs with a weight per target,
RoPE positions, and where the piece sits in the example's attention (`doc`, `share`) and
which response it is (`response`: 1 chosen, 2 rejected, 3 edited). Pieces of one example are
packed into one row (llama3_jax/data/conversations/prepared.py), so a response can share its prompt:

- SFT: one piece; the weight is 1 on the assistant's tokens and each of their `<|eot_id|>`
  (so the model learns to stop), 0 on system, user and header tokens (report §4.1.3).
- Preferences, layout "shared": the prompt once, then each response as a piece that attends to
  the prompt (a shared-prefix segment, llama3_jax/model/attention_ops.py) with positions that
  continue after it; the prompt's last token opens every response piece, as its input predicts
  the response's first token. Layout "separate": prompt + response as a document of its own
  per response. Both give each response token the same context, so the same log-probs.
  DPO weighs the response's content only: the header and `<|eot_id|>` are format tokens
  (report §4.1.4).
"""

import json
import pathlib
from typing import Iterator, NamedTuple

import numpy as np

from llama3_jax.data.conversations.chat import ASSISTANT, encode_chat

KINDS = ("sft", "preference")
LAYOUTS = ("shared", "separate")
CHOSEN, REJECTED, EDITED = 1, 2, 3
RESPONSES = {"chosen": CHOSEN, "rejected": REJECTED, "edited": EDITED}


class Piece(NamedTuple):
  inputs: np.ndarray      # int32 [n]
  targets: np.ndarray     # int32 [n]
  weights: np.ndarray     # int32 [n], 0 or 1 per target
  positions: np.ndarray   # int32 [n]
  doc: int                # the example's documents: 0, 1, 2, ... (separate layout: one each)
  share: int              # r >= 1: a response that also sees doc 0 (the shared prompt)
  response: int           # 0, or CHOSEN / REJECTED / EDITED: the sums DPO and rewards take


class ExampleError(ValueError):
  """A bad example of a conversation file; the message names the file, the line and the fix."""


def _fail(path, line: int, problem: str, fix: str):
  raise ExampleError(f"{path}:{line}: {problem}; {fix}")


def check_messages(messages, *, path, line: int, kind: str) -> None:
  """Roles in order: an optional system message, then user and assistant turns alternating
  from the user; SFT ends with the assistant, a preference prompt with the user."""
  if not isinstance(messages, list) or not messages:
    _fail(path, line, "'messages' must be a non-empty list", 'write e.g. "messages": '
          '[{"role": "user", "content": "..."}]')
  roles = []
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
      _fail(path, line, f"message {i} is not a dict with 'role' and 'content'",
            'write {"role": "user", "content": "..."}')
    if not isinstance(message["content"], str) or not message["content"].strip():
      _fail(path, line, f"message {i} ({message['role']}) has empty or non-text content",
            "give every message some text, or drop the message")
    roles.append(message["role"])
  body = roles[1:] if roles[0] == "system" else roles
  expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(body))]
  if body != expected:
    _fail(path, line, f"roles {roles} are out of order", "use an optional system message, "
          "then user and assistant turns alternating, starting with the user")
  if kind == "sft" and (not body or body[-1] != "assistant"):
    _fail(path, line, "the conversation has no assistant turn to learn (or does not end with "
          "one)", "end it with the assistant's reply")
  if kind == "preference" and (not body or body[-1] != "user"):
    _fail(path, line, "a preference prompt must end with the user's turn",
          "put the assistant's answers in 'chosen' and 'rejected', not in 'messages'")


def read_examples(path, kind: str) -> Iterator[tuple[int, dict | ExampleError]]:
  """(line number, example) of a conversation file, each checked; a bad line gives
  (line number, ExampleError naming the file, line and fix) and reading goes on."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; use one of {KINDS}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; give a JSONL file of conversations")
  with open(path, "rb") as f:   # a line that is not UTF-8 is one bad line, not a traceback
    for line_no, line in enumerate(f, start=1):
      if line.strip():
        try:
          yield line_no, _example(path, line_no, line, kind)
        except ExampleError as error:
          yield line_no, error


def _example(path, line_no: int, raw: bytes, kind: str) -> dict:
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as error:
    _fail(path, line_no, f"not UTF-8 ({error.reason} at byte {error.start})",
          "save the file as UTF-8")
  try:
    example = json.loads(line)
  except json.JSONDecodeError as error:
    _fail(path, line_no, f"not JSON ({error.msg})", "write one JSON object per line")
  if not isinstance(example, dict) or "messages" not in example:
    _fail(path, line_no, "no 'messages' field", 'write {"messages": [...]}' + (
        ', "chosen": ..., "rejected": ...' if kind == "preference" else ""))
  check_messages(example["messages"], path=path, line=line_no, kind=kind)
  if kind == "preference":
    for name in ("chosen", "rejected") + (("edited",) if "edited" in example else ()):
      if not isinstance(example.get(name), str) or not example[name].strip():
        _fail(path, line_no, f"'{name}' is missing or empty", f"give the {name} answer as text")
    answers = [example[n].strip() for n in RESPONSES if n in example]
    if len(set(answers)) < len(answers):
      _fail(path, line_no, "two of the ranked answers are identical",
            "a preference needs different answers; drop the example")
  return example


def _piece(ids, weights, start: int, doc: int, share: int = 0, response: int = 0) -> Piece:
  ids, weights = np.asarray(ids, np.int32), np.asarray(weights, np.int32)
  n = ids.size - 1
  return Piece(ids[:-1], ids[1:], weights[1:], np.arange(start, start + n, dtype=np.int32),
               doc, share, response)


def sft_pieces(tokenizer, messages) -> list[Piece]:
  """One piece: the conversation, weight 1 on the assistant's tokens and their <|eot_id|>."""
  ids, roles = encode_chat(tokenizer, messages)
  return [_piece(ids, roles == ASSISTANT, 0, doc=0)]


def response_weights(tokenizer, ids, roles) -> np.ndarray:
  """DPO's and the reward's tokens of a response: its content, not the header or <|eot_id|>."""
  return (roles == ASSISTANT) & (ids != tokenizer.special_id("<|eot_id|>"))


def preference_pieces(tokenizer, messages, responses: dict, layout: str = "shared",
                      reward: bool = False) -> list[Piece]:
  """The prompt and each response (name -> text: chosen, rejected, edited, or a response id
  1, 2, ... -> text; in the dict's order) as pieces. `reward`: each response's `<|eot_id|>`
  is also an input (its last), where a reward model reads the response's score."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; use one of {LAYOUTS}")
  # Earlier assistant turns belong to the prompt: only the new answer is weighed.
  prompt = len(encode_chat(tokenizer, messages, add_generation_prompt=True)[0])
  encoded = {}
  for name, text in responses.items():
    ids, roles = encode_chat(tokenizer, list(messages) + [{"role": "assistant",
                                                           "content": text}])
    weights = response_weights(tokenizer, ids, roles)
    weights[:prompt] = False
    if reward:   # one more (input, target) pair: <|eot_id|> in, nothing to learn out
      ids, weights = np.r_[ids, ids[-1:]], np.r_[weights, False]
    encoded[name] = (ids, weights)
  if layout == "separate":
    return [_piece(ids, w, 0, doc=i, response=_response_id(name))
            for i, (name, (ids, w)) in enumerate(encoded.items())]
  # The shared prompt: the tokens every response starts with, none of them weighed.
  first = next(iter(encoded.values()))[0]
  shared = min(len(first), *(len(ids) for ids, _ in encoded.values())) - 1
  for ids, w in encoded.values():
    same = np.flatnonzero(ids[:shared] != first[:shared])
    shared = min(shared, int(same[0]) if same.size else shared)
    weighted = np.flatnonzero(w)
    shared = min(shared, int(weighted[0]) if weighted.size else shared)
  pieces = [_piece(first[:shared], np.zeros(shared), 0, doc=0)] if shared > 1 else []
  start = max(shared - 1, 0)
  for r, (name, (ids, w)) in enumerate(encoded.items(), start=1):
    # The prompt's last token opens the response piece: its input predicts the first token.
    pieces.append(_piece(ids[start:], w[start:], start, doc=0, share=r if pieces and shared > 1
                         else 0, response=_response_id(name)))
  return pieces


def _response_id(name) -> int:
  return RESPONSES[name] if isinstance(name, str) else int(name)


def truncate_left(pieces: list[Piece], room: int, keep: int = 1) -> tuple[list[Piece], int]:
  """Drops prompt tokens after the first `keep` (BOS) until the pieces fit `room` inputs:
  (pieces, tokens dropped). Only the first piece's unweighted head is cut (the shared prompt);
  if that is not enough, or the layout is "separate", returns ([], n): skip the example."""
  total = sum(p.inputs.size for p in pieces)
  excess = total - room
  if excess <= 0:
    return pieces, 0
  if len({p.doc for p in pieces}) > 1:   # the separate layout: each response repeats the prompt
    return [], excess
  first = pieces[0]
  tokens = np.r_[first.inputs, first.targets[-1:]]   # the piece's tokens; weights per token:
  token_weights = np.r_[0, first.weights]             # a target's weight on the token it is
  shared_prompt = len(pieces) > 1 and pieces[1].share > 0
  weighted = np.flatnonzero(token_weights)
  # Cut after BOS, before the first weighed token's own context token (SFT), or before the
  # shared prompt's last token (it opens every response piece).
  limit = tokens.size - 1 if shared_prompt or not weighted.size else int(weighted[0]) - 1
  if excess > limit - keep:
    return [], excess
  kept = np.r_[np.arange(keep), np.arange(keep + excess, tokens.size)]
  tokens, token_weights = tokens[kept], token_weights[kept]
  # Positions restart after the cut: a left-truncated prompt reads as a shorter one.
  head = Piece(tokens[:-1], tokens[1:], token_weights[1:],
               np.arange(tokens.size - 1, dtype=np.int32), first.doc, first.share,
               first.response)
  rest = [p._replace(positions=p.positions - excess) if shared_prompt else p for p in pieces[1:]]
  return [head] + rest, excess
