"""A tokenizer as a Hugging Face directory holds it, out and back in.

    hf.save_tokenizer("tokenizer.model", "/tmp/exported")   # what transformers.AutoTokenizer reads
    tokenizer = hf.load_tokenizer("/tmp/exported")          # ours, read back

A tokenizer (either format, llama3_jax/data/tokenizers.py) is written as the files
`transformers.AutoTokenizer` reads (tokenizer.json built with the `tokenizers` library that
transformers depends on, tokenizer_config.json with the Llama 3 chat template, and
special_tokens_map.json) plus the original file as `original/tokenizer.model`, the place Meta's
Hugging Face repositories keep it, which `load_tokenizer` reads back. Both encode alike, with one
difference: transformers turns special-token text inside a string into the special token unless
called with `split_special_tokens=True`; ours always spells it as text. A directory with only
`tokenizer.json` (many fine-tuned Llama 3 repositories) is read through the `tokenizers` library
(llama3_jax/data/tokenizer_json.py), and written back as that file with our chat template.
"""

import json
import os
import pathlib
import shutil

from llama3_jax.data.tokenizer_json import TokenizerJson
from llama3_jax.data.tokenizers import (LLAMA3_PATTERN, Llama3Tokenizer, SentencePieceTokenizer,
                                        Tokenizer)
from llama3_jax.data.tokenizers import load_tokenizer as load_tokenizer_file


def save_tokenizer(tokenizer: Tokenizer | str | os.PathLike, path, *,
                   max_seq_len: int | None = None) -> None:
  """Writes the files `transformers.AutoTokenizer.from_pretrained(path)` reads, plus ours."""
  from llama3_jax.data.conversations.chat import CHAT_TEMPLATE
  tokenizer = as_tokenizer(tokenizer)
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  names = {}
  if isinstance(tokenizer, TokenizerJson):   # already the file transformers reads
    backend = tokenizer.backend
  elif isinstance(tokenizer, Llama3Tokenizer):
    backend = _llama3_backend(tokenizer)
  elif isinstance(tokenizer, SentencePieceTokenizer):
    backend, names = _sentencepiece_backend(tokenizer), {"unk_token": tokenizer.sp.id_to_piece(
        tokenizer.sp.unk_id())}
  else:
    raise TypeError(f"cannot export a {type(tokenizer).__name__}; pass a SentencePieceTokenizer, "
                    "a Llama3Tokenizer or a TokenizerJson (llama3_jax.data.tokenizers."
                    "load_tokenizer)")
  # Base models end a document with end_of_text (SentencePiece: </s>); chat turns end with
  # <|eot_id|>, which the template writes.
  names.update(bos_token=backend.id_to_token(tokenizer.bos_id),
               eos_token=backend.id_to_token(tokenizer.eos_id))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **names,
            "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"]}
  if max_seq_len:
    config["model_max_length"] = max_seq_len
  if isinstance(tokenizer, TokenizerJson):
    shutil.copyfile(tokenizer.path, path / "tokenizer.json")
  else:   # and the original file, where Meta's repositories keep it
    backend.save(str(path / "tokenizer.json"))
    (path / "original").mkdir(exist_ok=True)
    shutil.copyfile(tokenizer.path, path / "original" / "tokenizer.model")
  (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
  (path / "special_tokens_map.json").write_text(json.dumps(names, indent=2))


def load_tokenizer(path) -> Tokenizer:
  """Our tokenizer from a Hugging Face directory: `original/tokenizer.model` (as `save` and
  Meta's repositories keep it), else `tokenizer.model` (Llama 2 style repositories), else
  `tokenizer.json` (read with the `tokenizers` library: the ids of transformers' AutoTokenizer)."""
  path = pathlib.Path(path)
  for file in (path / "original" / "tokenizer.model", path / "tokenizer.model",
               path / "tokenizer.json"):
    if file.is_file():
      return load_tokenizer_file(file)
  raise FileNotFoundError(f"{path} has no tokenizer: none of original/tokenizer.model, "
                          "tokenizer.model, tokenizer.json; save with hf.save(..., tokenizer=...) "
                          "or copy the model's tokenizer files there")


def as_tokenizer(tokenizer) -> Tokenizer:
  return load_tokenizer_file(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer


def _added_tokens(backend, specials: dict[str, int]) -> None:
  """Adds the special tokens under their own ids; raises if the backend numbered them else."""
  from tokenizers import AddedToken
  ordered = sorted(specials, key=specials.get)
  backend.add_special_tokens([AddedToken(name, special=True, normalized=False)
                              for name in ordered])
  wrong = [name for name in ordered if backend.token_to_id(name) != specials[name]]
  if wrong:
    raise ValueError(f"special tokens {wrong[:3]} got other ids in tokenizer.json than in the "
                     "tokenizer; their ids must follow the vocabulary without gaps")


def _llama3_backend(tokenizer: Llama3Tokenizer):
  """tokenizer.json for Meta's tiktoken BPE: byte-level BPE, Llama 3's split regex.

  As in Meta's Hugging Face export: merges ranked by the rank of the token they make, and a
  word already in the vocabulary taken whole (`ignore_merges`, what tiktoken does).
  """
  from tiktoken.load import load_tiktoken_bpe
  from tokenizers import Regex, Tokenizer as Backend, decoders, models, pre_tokenizers, processors
  ranks = load_tiktoken_bpe(tokenizer.path)
  chars = _byte_chars()
  spell = lambda token: "".join(chars[b] for b in token)
  merges = []
  for token, rank in ranks.items():
    splits = [(token[:i], token[i:]) for i in range(1, len(token))
              if token[:i] in ranks and token[i:] in ranks]
    merges += [(rank, ranks[a], ranks[b], a, b) for a, b in splits]
  merges.sort()
  backend = Backend(models.BPE(
      vocab={spell(token): rank for token, rank in ranks.items()},
      merges=[(spell(a), spell(b)) for *_, a, b in merges], ignore_merges=True))
  backend.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  backend.decoder = decoders.ByteLevel()
  _added_tokens(backend, tokenizer.special_tokens)
  bos = "<|begin_of_text|>"
  backend.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
      special_tokens=[(bos, tokenizer.bos_id)])
  return backend


def _sentencepiece_backend(tokenizer: SentencePieceTokenizer):
  """tokenizer.json for a SentencePiece BPE model (Llama 2's recipe, as train_sentencepiece).

  SentencePiece merges the pair whose result scores highest; ranking merges by that score
  makes Hugging Face's BPE merge alike. Its dummy prefix "▁" starts every text between special
  tokens, as `encode` adds it to every text; a normalizer does that (not the Metaspace
  pre-tokenizer, which skips the prefix when the text starts with a space).
  """
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import Tokenizer as Backend, decoders, models, normalizers, processors
  proto = sentencepiece_model_pb2.ModelProto.FromString(pathlib.Path(tokenizer.path).read_bytes())
  spec, norm = proto.trainer_spec, proto.normalizer_spec
  user_defined = [p.piece for p in proto.pieces if p.type == p.USER_DEFINED]
  if (spec.model_type != spec.BPE or norm.name != "identity" or norm.remove_extra_whitespaces
      or user_defined or spec.treat_whitespace_as_suffix):
    raise ValueError(f"{tokenizer.path} is not a plain SentencePiece BPE model (model_type="
                     f"{spec.model_type}, normalizer={norm.name!r}, user symbols "
                     f"{user_defined[:3]}); only BPE with the identity normalizer, as "
                     "train_sentencepiece writes, converts to tokenizer.json")
  vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == p.NORMAL}
  merges = sorted((normal[piece], normal[piece[:i]], normal[piece[i:]], piece[:i], piece[i:])
                  for piece in normal for i in range(1, len(piece))
                  if piece[:i] in normal and piece[i:] in normal)
  unk = proto.pieces[tokenizer.sp.unk_id()].piece
  backend = Backend(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=unk,
                               fuse_unk=True, byte_fallback=spec.byte_fallback))
  prefix = [normalizers.Prepend("▁")] if norm.add_dummy_prefix else []
  backend.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", "▁")])
  strip = [decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []
  backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                       decoders.Fuse()] + strip)
  _added_tokens(backend, {unk: tokenizer.sp.unk_id(), **tokenizer.special_tokens})
  bos = proto.pieces[tokenizer.bos_id].piece
  backend.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tokenizer.bos_id)])
  return backend


def _byte_chars() -> list[str]:
  """GPT-2's byte -> printable character table, in which byte-level BPE vocabularies are spelled:
  printable Latin-1 bytes stand for themselves, the others for chr(256 + k)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  chars, k = [], 0
  for b in range(256):
    if b in printable:
      chars.append(chr(b))
    else:
      chars.append(chr(256 + k))
      k += 1
  return chars
