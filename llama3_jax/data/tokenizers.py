"""Tokenizers behind one interface: SentencePiece models and Meta's Llama 3 format.

    tok = load_tokenizer("tokenizer.model")     # either format; detected from the content
    ids = tok.encode("Hello", bos=True, eos=True)
    text = tok.decode(ids)

Meta ships Llama 3's `tokenizer.model` as a tiktoken BPE ranks file (one `base64(token) rank`
per line, 128,000 tokens) plus 256 special tokens numbered after them; the SentencePiece format
is a protobuf. Both are called `tokenizer.model`, so `load_tokenizer` looks at the bytes.
Train a SentencePiece model with `python -m experiments.train_tokenizer`. Special tokens go by
their Llama 3 names in both formats: `tok.special_id("<|eot_id|>")` (a SentencePiece model has
the chat tokens when trained with `special_tokens=CHAT_SPECIAL_TOKENS`).
"""

import base64
import io
import itertools
import pathlib
from typing import Iterable, Protocol, Sequence

import numpy as np

from llama3_jax.errors import UserError

# Llama 3's pre-tokenisation split (Meta's reference tokenizer.py).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_NUM_SPECIAL = 256
# Llama 3.1's numbering, as in its Hugging Face tokenizer.json: 128000 + index.
_LLAMA3_NAMED = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                 "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")


# The tokens Llama 3's chat format needs besides begin/end of text
# (llama3_jax/data/conversations/chat.py).
# A SentencePiece model keeps them as control symbols: encode() never makes them from text.
CHAT_SPECIAL_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def llama3_special_tokens() -> list[str]:
  """The 256 special tokens in id order (ids start right after the BPE ranks)."""
  reserved = [f"<|reserved_special_token_{i}|>"
              for i in range(3, 3 + LLAMA3_NUM_SPECIAL - len(_LLAMA3_NAMED))]
  return list(_LLAMA3_NAMED) + reserved


class Tokenizer(Protocol):
  vocab_size: int
  bos_id: int
  eos_id: int
  special_tokens: dict[str, int]

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]: ...

  def decode(self, ids: Iterable[int]) -> str: ...

  def special_id(self, name: str) -> int: ...


class SentencePieceTokenizer:

  def __init__(self, path):
    import sentencepiece as spm
    self.path = str(path)
    self.sp = spm.SentencePieceProcessor(model_file=self.path)
    self.vocab_size = self.sp.get_piece_size()
    self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
    self.special_tokens = {self.sp.id_to_piece(i): i for i in range(self.vocab_size)
                           if self.sp.is_control(i)}

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    return [self.bos_id] * bos + self.sp.encode(text) + [self.eos_id] * eos

  def decode(self, ids: Iterable[int]) -> str:
    return self.sp.decode([int(i) for i in ids])

  def special_id(self, name: str) -> int:
    """The id of a special token by its Llama 3 name; begin/end of text are `<s>` / `</s>`."""
    aliases = {"<|begin_of_text|>": self.bos_id, "<|end_of_text|>": self.eos_id}
    token_id = aliases.get(name, self.special_tokens.get(name, -1))
    if token_id < 0:
      raise ValueError(f"SentencePiece model {self.path} has no special token {name} (it has "
                       f"{sorted(self.special_tokens)}); train it with train_sentencepiece(..., "
                       "special_tokens=CHAT_SPECIAL_TOKENS) to use the Llama 3 chat format")
    return token_id


class Llama3Tokenizer:
  """Meta's Llama 3 tokenizer: tiktoken BPE ranks + 256 special tokens."""

  def __init__(self, path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    self.path = str(path)
    ranks = load_tiktoken_bpe(self.path)
    specials = llama3_special_tokens()
    self.special_tokens = {token: len(ranks) + i for i, token in enumerate(specials)}
    self.encoding = tiktoken.Encoding(name=pathlib.Path(path).name, pat_str=LLAMA3_PATTERN,
                                      mergeable_ranks=ranks,
                                      special_tokens=self.special_tokens)
    self.vocab_size = len(ranks) + len(specials)
    self.bos_id = self.special_tokens["<|begin_of_text|>"]
    self.eos_id = self.special_tokens["<|end_of_text|>"]
    self.eot_id = self.special_tokens["<|eot_id|>"]

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    # Special-token strings inside ordinary text are encoded as text, never as control tokens:
    # a document cannot forge a chat header.
    ids = self.encoding.encode(text, disallowed_special=())
    return [self.bos_id] * bos + ids + [self.eos_id] * eos

  def decode(self, ids: Iterable[int]) -> str:
    return self.encoding.decode([int(i) for i in ids])

  def special_id(self, name: str) -> int:
    if name not in self.special_tokens:
      raise ValueError(f"{name} is not one of Llama 3's special tokens (e.g. <|eot_id|>, "
                       "<|reserved_special_token_0|>; see llama3_special_tokens())")
    return self.special_tokens[name]


def load_tokenizer(path) -> Tokenizer:
  """A SentencePiece model, a Llama 3 tiktoken file or a Hugging Face tokenizer.json, told
  apart by their bytes."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"tokenizer file {path} does not exist; pass the path of a "
                            "SentencePiece .model or Meta's Llama 3 tokenizer.model")
  head = path.read_bytes()[:4096]
  if head.lstrip().startswith(b"{"):   # a Hugging Face tokenizer.json
    from llama3_jax.data.tokenizer_json import TokenizerJson
    return TokenizerJson(path)
  first = head.split(b"\n", 1)[0].split()
  if len(first) == 2 and first[1].isdigit():
    try:
      base64.b64decode(first[0], validate=True)
      return Llama3Tokenizer(path)
    except ValueError:
      pass
  try:
    return SentencePieceTokenizer(path)
  except Exception as error:  # sentencepiece raises a bare RuntimeError on a bad file
    raise ValueError(f"{path} is neither a SentencePiece model nor a Llama 3 (tiktoken) "
                     f"tokenizer file ({error})") from None


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out, *,
                        character_coverage: float = 0.9995,
                        special_tokens: Sequence[str] = (),
                        where: str = "the training texts",
                        exact: bool = False) -> SentencePieceTokenizer:
  """Trains a byte-fallback BPE model (like Llama 2's) on `texts`, written to `out`.

  Characters outside `character_coverage` of the text are spelled as bytes; lower it when a
  small vocabulary must cover many scripts. `special_tokens` (e.g. CHAT_SPECIAL_TOKENS) become
  control symbols with ids 3, 4, ... right after <unk>, <s>, </s>. No text, or a text that
  cannot train `vocab_size` pieces, is a UserError naming `where` (SentencePiece would say only
  "INTERNAL: ... [!sentences_.empty()]"). A text too small for `vocab_size` pieces gives fewer,
  or with `exact` is a UserError (nothing written).
  """
  import sentencepiece as spm
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  model = io.BytesIO()
  # SentencePiece skips "sentences" over max_sentence_length bytes: feed it lines.
  lines = (line for text in texts for line in text.splitlines() if line.strip())
  first = next(lines, None)
  if first is None:
    raise UserError(f"{where}: no text to train a tokenizer on",
                    "give files with non-empty documents (check the text field name)")
  try:
    _train_bpe(spm, itertools.chain([first], lines), model, vocab_size, character_coverage,
               special_tokens)
  except RuntimeError as error:   # SentencePiece's own checks: a bare RuntimeError
    raise UserError(f"SentencePiece cannot train on {where}: {str(error).splitlines()[0]}",
                    "check --vocab-size against the amount of text") from None
  trained = spm.SentencePieceProcessor(model_proto=model.getvalue()).vocab_size()
  if exact and trained < vocab_size:
    raise UserError(f"{where}: the text fills only {trained:,} of the {vocab_size:,} pieces "
                    "asked for", f"give a vocabulary size of {trained} or less, or more text")
  tmp = out.with_suffix(out.suffix + ".tmp")
  tmp.write_bytes(model.getvalue())
  tmp.replace(out)
  return SentencePieceTokenizer(out)


def _train_bpe(spm, lines, model, vocab_size, character_coverage, special_tokens):
  spm.SentencePieceTrainer.train(
      sentence_iterator=lines, model_writer=model, vocab_size=vocab_size, model_type="bpe",
      byte_fallback=True, character_coverage=character_coverage, bos_id=1, eos_id=2,
      unk_id=0, pad_id=-1, control_symbols=list(special_tokens),
      # A small corpus may not support vocab_size pieces: take what it supports.
      hard_vocab_limit=False,
      # One thread, every sentence, no sampling: the same texts give the same model.
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2, split_digits=True,
      allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
      normalization_rule_name="identity")


def check_token_ids(ids: np.ndarray, vocab_size: int, where: str = "") -> None:
  """Raises if any id is outside [0, vocab_size): a tokenizer/model mismatch."""
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    bad = int(ids.max()) if ids.max() >= vocab_size else int(ids.min())
    raise ValueError(f"token id {bad}{' in ' + where if where else ''} is outside the model's "
                     f"vocabulary of {vocab_size}; the data was tokenized with a larger "
                     "tokenizer than model.vocab_size allows: set model.vocab_size to the "
                     "tokenizer's vocab size or re-prepare the data with a matching tokenizer")
