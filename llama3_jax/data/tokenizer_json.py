"""A Hugging Face `tokenizer.json` as one of our tokenizers, through the `tokenizers` library.

    tok = TokenizerJson("/models/Llama-3.1-8B-Instruct-finetune/tokenizer.json")
    ids = tok.encode("Hello", bos=True)     # the ids transformers' AutoTokenizer gives

Many fine-tuned Llama 3 repositories ship only `tokenizer.json` (no `original/tokenizer.model`).
Its begin/end-of-text tokens are the ones `tokenizer_config.json` beside it names (as
AutoTokenizer reads them; Llama 3 Instruct ends with `<|eot_id|>`), else Llama 3's. As our other
tokenizers do, `encode` spells special-token text inside a string as text (transformers'
`split_special_tokens=True`): special tokens are placed by id (llama3_jax/data/conversations/).
"""

import json
import pathlib
from typing import Iterable

from llama3_jax.errors import UserError


class TokenizerJson:

  def __init__(self, path):
    from tokenizers import Tokenizer as Backend
    self.path = str(path)
    try:
      self.backend = Backend.from_file(self.path)
    except Exception as error:  # noqa: BLE001 - the library raises a bare Exception
      raise UserError(f"{path} is not a Hugging Face tokenizer.json ({error})",
                      "give the tokenizer.json of a Hugging Face model directory") from None
    self.backend.encode_special_tokens = True   # special-token text is text
    self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
    self.special_tokens = {token.content: i for i, token in
                           self.backend.get_added_tokens_decoder().items() if token.special}
    names = _special_names(pathlib.Path(path).parent)
    self.bos_id = self._id(names.get("bos_token") or "<|begin_of_text|>", "bos_token")
    self.eos_id = self._id(names.get("eos_token") or "<|end_of_text|>", "eos_token")

  def _id(self, token: str, role: str) -> int:
    token_id = self.backend.token_to_id(token)
    if token_id is None:
      raise UserError(f"{self.path} has no token {token!r} (the {role})",
                      "give the tokenizer.json with its model's tokenizer_config.json")
    return token_id

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    ids = self.backend.encode(text, add_special_tokens=False).ids
    return [self.bos_id] * bos + ids + [self.eos_id] * eos

  def decode(self, ids: Iterable[int]) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

  def special_id(self, name: str) -> int:
    """The id of a special token by its Llama 3 name; where the vocabulary has no begin/end of
    text by that name (a SentencePiece vocabulary's <s>, </s>), its bos/eos tokens."""
    aliases = {"<|begin_of_text|>": self.bos_id, "<|end_of_text|>": self.eos_id}
    if name not in self.special_tokens and name in aliases:
      return aliases[name]
    if name not in self.special_tokens:
      raise ValueError(f"{self.path} has no special token {name} (it has "
                       f"{sorted(self.special_tokens)[:8]}...); Llama 3's chat format needs "
                       "<|start_header_id|>, <|end_header_id|> and <|eot_id|>")
    return self.special_tokens[name]


def _special_names(directory: pathlib.Path) -> dict[str, str]:
  """bos_token / eos_token as tokenizer_config.json (else special_tokens_map.json) names them."""
  for file in ("tokenizer_config.json", "special_tokens_map.json"):
    if (directory / file).is_file():
      try:
        config = json.loads((directory / file).read_text())
      except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{directory / file} is not valid JSON ({error})",
                        "download the tokenizer files again") from None
      names = {}
      for key in ("bos_token", "eos_token"):
        value = config.get(key)
        names[key] = value.get("content") if isinstance(value, dict) else value
      return names
  return {}
