"""Tokenizers: SentencePiece training and round trips, Meta's Llama 3 format, id checks."""

import base64

import numpy as np
import pytest
from tiktoken._educational import bpe_train

from llama3_jax.data.tokenizers import (LLAMA3_PATTERN, Llama3Tokenizer, SentencePieceTokenizer,
                                        check_token_ids, llama3_special_tokens, load_tokenizer,
                                        train_sentencepiece)

TEXT = ("The quick brown fox jumps over the lazy dog 1234567890 times.\n"
        "def f(x):\n    return x ** 2  # squares\n\n"
        "Größe, naïve café; Ünïcödé. Привет, мир! 你好，世界。 🙂\t tabs and  double  spaces\n")
SAMPLES = ["", " ", "a", "\n\n", "  leading and trailing  ", "🙂🙂", "x = [1, 2, 3]\n",
           "日本語のテキスト", "<|eot_id|> is plain text here"]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
  path = tmp_path_factory.mktemp("sp") / "tok.model"
  return train_sentencepiece([TEXT * 3] * 20, 400, path, character_coverage=0.99)


@pytest.fixture(scope="module")
def llama3_model(tmp_path_factory):
  ranks = bpe_train(TEXT * 5, 300, LLAMA3_PATTERN, visualise=None)
  path = tmp_path_factory.mktemp("l3") / "tokenizer.model"
  path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                          for token, rank in ranks.items()))
  return path, len(ranks)


@pytest.mark.parametrize("text", SAMPLES + [TEXT])
def test_sentencepiece_round_trip(sentencepiece_model, text):
  ids = sentencepiece_model.encode(text, bos=True, eos=True)
  assert ids[0] == sentencepiece_model.bos_id and ids[-1] == sentencepiece_model.eos_id
  assert all(0 <= i < sentencepiece_model.vocab_size for i in ids)
  assert sentencepiece_model.decode(ids) == text      # byte fallback: nothing is lost


def test_sentencepiece_is_detected_and_deterministic(sentencepiece_model, tmp_path):
  assert isinstance(load_tokenizer(sentencepiece_model.path), SentencePieceTokenizer)
  again = train_sentencepiece([TEXT * 3] * 20, 400, tmp_path / "again.model",
                              character_coverage=0.99)
  assert again.encode(TEXT) == sentencepiece_model.encode(TEXT)
  assert sentencepiece_model.vocab_size == 400
  assert len(sentencepiece_model.encode(TEXT)) < len(TEXT.encode())   # it did learn merges


@pytest.mark.parametrize("text", SAMPLES + [TEXT])
def test_llama3_round_trip(llama3_model, text):
  tok = load_tokenizer(llama3_model[0])
  assert isinstance(tok, Llama3Tokenizer)
  ids = tok.encode(text, bos=True, eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert tok.decode(ids[1:-1]) == text


def test_llama3_special_tokens(llama3_model):
  path, n_ranks = llama3_model
  tok = Llama3Tokenizer(path)
  specials = llama3_special_tokens()
  assert len(specials) == 256 and len(set(specials)) == 256
  assert tok.vocab_size == n_ranks + 256
  # Llama 3.1: 128000 begin_of_text, 128001 end_of_text, 128006/7 header, 128009 eot, 128255 last.
  assert tok.bos_id == n_ranks and tok.eos_id == n_ranks + 1
  assert tok.special_tokens["<|start_header_id|>"] == n_ranks + 6
  assert tok.eot_id == n_ranks + 9
  assert tok.special_tokens["<|reserved_special_token_247|>"] == n_ranks + 255
  # A special token's text inside a document is text, not the control token.
  assert tok.eot_id not in tok.encode("<|eot_id|>")
  assert tok.decode([tok.special_tokens["<|start_header_id|>"]]) == "<|start_header_id|>"


def test_bad_tokenizer_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(tmp_path / "missing.model")
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"\x00\x01not a tokenizer")
  with pytest.raises(ValueError, match="neither a SentencePiece model nor a Llama 3"):
    load_tokenizer(garbage)


def test_token_ids_outside_the_vocabulary_are_an_error():
  check_token_ids(np.array([[0, 5, 511]]), 512)
  with pytest.raises(ValueError, match="token id 512 .*outside the model's vocabulary of 512"):
    check_token_ids(np.array([[0, 512]]), 512)
  with pytest.raises(ValueError, match="token id -1"):
    check_token_ids(np.array([-1, 3]), 512)
