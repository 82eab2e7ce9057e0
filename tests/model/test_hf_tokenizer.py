"""Tokenizer export to Hugging Face: transformers encodes, decodes and formats chats as we do;
a directory with only tokenizer.json reads back with transformers' ids."""

import base64
import json
import pathlib

import pytest
import transformers
from flax import nnx
from tiktoken._educational import bpe_train

from llama3_jax import hf
from llama3_jax.data.tokenizer_json import TokenizerJson
from llama3_jax.data.tokenizers import (CHAT_SPECIAL_TOKENS, LLAMA3_PATTERN, Llama3Tokenizer,
                                        load_tokenizer, train_sentencepiece)
from llama3_jax.data.conversations.chat import encode_chat, format_chat
from llama3_jax.model import ModelConfig, Transformer

TEXT = ("The quick brown fox jumps over the lazy dog 1234567890 times.\n"
        "def f(x):\n    return x ** 2  # squares\n\n"
        "Größe, naïve café; Ünïcödé. Привет, мир! 你好，世界。 🙂\t tabs and  double  spaces\n")
TRICKY = ["", " ", "a", "   leading and trailing   ", "\t\ttabs  and   runs\n\n\n  of spaces",
          "\r\n\r\nwindows\r\n", "Größe naïve café Ünïcödé", "Привет, мир! 你好，世界。日本語",
          "🙂🙂 👍🏽 👨‍👩‍👧 ∮ ∞", "1234567890 3.14159 1e-9 0x1F",
          "def f(x):\n    return x ** 2  # squares\n", "it's we'll THEY'RE o'clock",
          "<|eot_id|> and <|begin_of_text|> and <s></s> are text", TEXT]
MESSAGES = [{"role": "system", "content": "You are brief."},
            {"role": "user", "content": " 2 + 2 = ?\n"},
            {"role": "assistant", "content": "4 🙂"}]


@pytest.fixture(scope="module", params=["sentencepiece", "llama3"])
def exported(request, tmp_path_factory):
  """(our tokenizer, the exported directory, transformers' tokenizer read from it)."""
  folder = tmp_path_factory.mktemp(request.param)
  if request.param == "sentencepiece":
    ours = train_sentencepiece([TEXT * 3] * 20, 400, folder / "tok.model",
                               character_coverage=0.99, special_tokens=CHAT_SPECIAL_TOKENS)
  else:
    ranks = bpe_train(TEXT * 5, 300, LLAMA3_PATTERN, visualise=None)
    (folder / "tokenizer.model").write_text("".join(
        f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items()))
    ours = Llama3Tokenizer(folder / "tokenizer.model")
  config = ModelConfig(vocab_size=ours.vocab_size, d_model=16, n_layers=1, n_heads=2,
                       n_kv_heads=1, head_dim=8, ffn_dim=32, max_seq_len=64)
  model = Transformer(config, rngs=nnx.Rngs(0))
  # A tokenizer object or the path of its file: both are accepted.
  tokenizer = ours if request.param == "sentencepiece" else ours.path
  hf.save(model, config, folder / "hf", tokenizer=tokenizer)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("HF_HUB_OFFLINE", "1")
    theirs = transformers.AutoTokenizer.from_pretrained(folder / "hf", local_files_only=True)
  return ours, folder / "hf", theirs


@pytest.mark.parametrize("text", TRICKY)
def test_transformers_encodes_and_decodes_as_we_do(exported, text):
  ours, _, theirs = exported
  ids = ours.encode(text)
  # split_special_tokens: special-token text is text, as in ours (transformers' default parses it).
  assert theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids
  assert theirs(text, split_special_tokens=True)["input_ids"] == [ours.bos_id] + ids   # adds BOS
  assert theirs.decode(ids) == ours.decode(ids) == text
  assert theirs.decode([ours.bos_id] + ids, skip_special_tokens=True) == text


def test_special_tokens_have_our_ids(exported):
  ours, _, theirs = exported
  assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_id, ours.eos_id)
  if isinstance(ours, Llama3Tokenizer):
    assert theirs.eos_token == "<|end_of_text|>" and len(theirs) == ours.vocab_size
  for name, token_id in ours.special_tokens.items():
    assert theirs.convert_tokens_to_ids(name) == token_id
    assert theirs(name, add_special_tokens=False)["input_ids"] == [token_id]   # by default


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_gives_our_chat_ids(exported, add_generation_prompt):
  ours, _, theirs = exported
  messages = MESSAGES[:2] if add_generation_prompt else MESSAGES
  ids_t, _ = encode_chat(ours, messages, add_generation_prompt=add_generation_prompt)
  theirs_ids = theirs.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                          tokenize=True, return_dict=True)["input_ids"]
  assert list(theirs_ids) == ids_t.tolist()
  text = theirs.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                    tokenize=False)
  assert text == format_chat(messages, add_generation_prompt).replace("<|begin_of_text|>",
                                                                      theirs.bos_token)


def test_read_back_tokenizer_equals_the_original(exported):
  ours, path, _ = exported
  again = hf.load_tokenizer(path)
  assert type(again) is type(ours)
  original = pathlib.Path(ours.path).read_bytes()
  assert (path / "original" / "tokenizer.model").read_bytes() == original
  assert (again.vocab_size, again.bos_id, again.eos_id, again.special_tokens) == (
      ours.vocab_size, ours.bos_id, ours.eos_id, ours.special_tokens)
  assert [again.encode(t) for t in TRICKY] == [ours.encode(t) for t in TRICKY]
  config, _ = hf.load(path)   # the model beside it still loads
  assert config.vocab_size == ours.vocab_size


def test_export_errors_name_the_fix(exported, tmp_path):
  ours, _, _ = exported
  config = ModelConfig(vocab_size=ours.vocab_size - 1, d_model=16, n_layers=1, n_heads=2,
                       n_kv_heads=1, head_dim=8, ffn_dim=32)
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))   # refused before use
  with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model only \d+"):
    hf.save(model, config, tmp_path / "x", tokenizer=ours)
  assert not (tmp_path / "x").exists()
  with pytest.raises(FileNotFoundError, match="original/tokenizer.model"):
    hf.load_tokenizer(tmp_path)


# Meta's chat template of Llama 3 Instruct (tokenizer_config.json), as fine-tuned repositories
# that ship only tokenizer.json carry it.
META_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


@pytest.fixture(scope="module")
def json_only(exported, tmp_path_factory):
  """(the tokenizer read from a directory with only tokenizer.json and tokenizer_config.json,
  AutoTokenizer's, the original one): a fine-tuned Llama 3 repository's files."""
  original, path, _ = exported
  folder = tmp_path_factory.mktemp("json_only")
  (folder / "tokenizer.json").write_bytes((path / "tokenizer.json").read_bytes())
  config = json.loads((path / "tokenizer_config.json").read_text())
  if isinstance(original, Llama3Tokenizer):   # an Instruct model's: ends turns, Meta's template
    config.update(eos_token="<|eot_id|>", chat_template=META_TEMPLATE)
  (folder / "tokenizer_config.json").write_text(json.dumps(config))
  ours = hf.load_tokenizer(folder)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("HF_HUB_OFFLINE", "1")
    theirs = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
  return ours, theirs, original


@pytest.mark.parametrize("text", TRICKY)
def test_tokenizer_json_encodes_as_transformers(json_only, text):
  ours, theirs, original = json_only
  assert isinstance(ours, TokenizerJson)
  ids = ours.encode(text)
  assert ids == theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
  assert ids == original.encode(text)
  assert ours.encode(text, bos=True) == theirs(text, split_special_tokens=True)["input_ids"]
  assert ours.decode(ids) == theirs.decode(ids) == text


def test_tokenizer_json_specials_and_chat_as_transformers(json_only):
  ours, theirs, original = json_only
  assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
  assert ours.vocab_size == len(theirs) == original.vocab_size
  assert ours.special_tokens.items() >= original.special_tokens.items()
  for add_generation_prompt in (False, True):
    messages = MESSAGES[:2] if add_generation_prompt else MESSAGES
    ids_t, _ = encode_chat(ours, messages, add_generation_prompt=add_generation_prompt)
    theirs_ids = theirs.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                            tokenize=True, return_dict=True)["input_ids"]
    assert ids_t.tolist() == list(theirs_ids)


def test_tokenizer_json_by_path_and_exported_again(json_only, tmp_path):
  """A run records its tokenizer's path: the tokenizer.json file alone loads again; a model
  exported with it carries it, and transformers reads that export alike."""
  ours, theirs, _ = json_only
  again = load_tokenizer(ours.path)
  assert [again.encode(t) for t in TRICKY] == [ours.encode(t) for t in TRICKY]
  config = ModelConfig(vocab_size=ours.vocab_size, d_model=16, n_layers=1, n_heads=2,
                       n_kv_heads=1, head_dim=8, ffn_dim=32, max_seq_len=64)
  hf.save(Transformer(config, rngs=nnx.Rngs(0)), config, tmp_path / "hf", tokenizer=ours)
  assert not (tmp_path / "hf" / "original").exists()
  exported = hf.load_tokenizer(tmp_path / "hf")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("HF_HUB_OFFLINE", "1")
    back = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
  for text in TRICKY:
    assert exported.encode(text) == ours.encode(text) == back(
        text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
  ids_t, _ = encode_chat(exported, MESSAGES)
  assert ids_t.tolist() == list(back.apply_chat_template(MESSAGES, tokenize=True,
                                                         return_dict=True)["input_ids"])


def test_a_file_that_is_not_a_tokenizer_json_is_named(tmp_path):
  (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
  with pytest.raises(ValueError, match="is not a Hugging Face tokenizer.json"):
    hf.load_tokenizer(tmp_path)
