"""Llama 3's chat format: conversations as the prompt string and as token ids with roles.

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = format_chat(messages, add_generation_prompt=True)         # the string, for display
    ids_t, roles_t = encode_chat(tokenizer, messages, add_generation_prompt=True)  # int32, int8
    weights_t = assistant_mask(roles_t)        # SFT: learn the assistant's tokens only
    reply = decode(tokenizer, generated_ids)   # special tokens dropped

The format (Meta's Llama 3 prompt format and its reference `ChatFormat`):

    <|begin_of_text|>
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>      per message
    <|start_header_id|>assistant<|end_header_id|>\\n\\n                      generation prompt

`content` is stripped of surrounding whitespace, as Meta's reference and Hugging Face's Llama 3
template do. Special tokens are placed by id; the text between them goes through
`tokenizer.encode`, which spells special-token text as ordinary text in both tokenizer formats
(llama3_jax/data/tokenizers.py), so a message containing "<|eot_id|>" cannot end its turn or
forge a header. The string from `format_chat` cannot show that difference: the ids are the truth.
SentencePiece models need the chat tokens (`train_sentencepiece(...,
special_tokens=CHAT_SPECIAL_TOKENS)`); `<|begin_of_text|>` is their `<s>`, and each text piece
starts with the "▁" dummy prefix that `encode` adds (so "\n\n" + content gets one, content none).
"""

from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from llama3_jax.data.tokenizers import Tokenizer

BEGIN, START_HEADER, END_HEADER, EOT = ("<|begin_of_text|>", "<|start_header_id|>",
                                        "<|end_header_id|>", "<|eot_id|>")
SEPARATOR = "\n\n"   # between a header and its content
# Per-token roles: FORMAT for BOS and headers; a message's content and its closing <|eot_id|>
# carry the message's role (so SFT learns to end its turn).
FORMAT, SYSTEM, USER, ASSISTANT = 0, 1, 2, 3
ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

# The same format as a Jinja template, for Hugging Face's `apply_chat_template` (hf.save writes
# it into tokenizer_config.json; tests/model/test_hf_tokenizer.py checks that the ids agree).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")


class _Piece(NamedTuple):
  special: str | None   # a special token's name, or None for text
  separator: str        # text: encoded with `text`, its tokens are FORMAT
  text: str
  role: int


def _pieces(messages: Sequence[Mapping], add_generation_prompt: bool) -> list[_Piece]:
  """The conversation in order: special tokens and the text pieces between them.

  A separator is encoded together with the text after it, as Hugging Face encodes the whole
  text between two special tokens at once.
  """
  def header(role):
    return [_Piece(START_HEADER, "", "", FORMAT), _Piece(None, "", role, FORMAT),
            _Piece(END_HEADER, "", "", FORMAT)]

  pieces = [_Piece(BEGIN, "", "", FORMAT)]
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping) or not {"role", "content"} <= message.keys():
      raise ValueError(f"message {i} is {message!r}; each message must be a dict with 'role' "
                       "and 'content', e.g. {'role': 'user', 'content': 'Hi'}")
    role, content = message["role"], message["content"]
    if role not in ROLES:
      raise ValueError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
    if not isinstance(content, str):
      raise ValueError(f"message {i} has content of type {type(content).__name__}; pass the "
                       "content as a str")
    pieces += header(role) + [_Piece(None, SEPARATOR, content.strip(), ROLES[role]),
                              _Piece(EOT, "", "", ROLES[role])]
  if add_generation_prompt:
    pieces += header("assistant") + [_Piece(None, SEPARATOR, "", ASSISTANT)]
  return pieces


def format_chat(messages: Sequence[Mapping], add_generation_prompt: bool = False) -> str:
  """The conversation as Llama 3's prompt string (see the module docstring)."""
  return "".join(p.special or p.separator + p.text
                 for p in _pieces(messages, add_generation_prompt))


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Mapping],
                add_generation_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(ids_t int32 [T], roles_t int8 [T]): the conversation's token ids and each token's role.

  Roles are FORMAT (0: BOS, headers, separators), SYSTEM (1), USER (2), ASSISTANT (3).
  """
  ids_t, roles_t = [], []
  for piece in _pieces(messages, add_generation_prompt):
    if piece.special:
      ids_t.append(tokenizer.special_id(piece.special))
      roles_t.append(piece.role)
      continue
    ids = tokenizer.encode(piece.separator + piece.text)
    # The separator's own tokens open the piece: no merge joins "\n\n" to stripped text
    # (Llama 3's split regex isolates newline runs; SentencePiece spells newlines as bytes).
    # Should a token ever straddle the two, it counts as content.
    head = tokenizer.encode(piece.separator) if piece.separator else []
    n_head = 0
    while n_head < min(len(head), len(ids)) and head[n_head] == ids[n_head]:
      n_head += 1
    ids_t += ids
    roles_t += [FORMAT] * n_head + [piece.role] * (len(ids) - n_head)
  return np.asarray(ids_t, np.int32), np.asarray(roles_t, np.int8)


def assistant_mask(roles_t: np.ndarray) -> np.ndarray:
  """bool [T]: the tokens SFT learns to produce (assistant content and its <|eot_id|>).

  For next-token loss the mask goes with the targets: inputs ids[:-1], targets ids[1:],
  weights mask[1:].
  """
  return np.asarray(roles_t) == ASSISTANT


def decode(tokenizer: Tokenizer, ids: Iterable[int], skip_special: bool = True) -> str:
  """Text of `ids` (e.g. generated ones); special tokens dropped, or shown by name."""
  names = {token_id: name for name, token_id in tokenizer.special_tokens.items()}
  parts, run = [], []
  for token_id in map(int, ids):
    if token_id in names:
      # Decode the text between special tokens on its own: SentencePiece renders control
      # symbols as nothing, so they are written here when asked for.
      parts.append(tokenizer.decode(run))
      run = []
      if not skip_special:
        parts.append(names[token_id])
    else:
      run.append(token_id)
  parts.append(tokenizer.decode(run))
  return "".join(parts)
