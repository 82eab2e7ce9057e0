"""Hugging Face Llama weights in and out (safetensors only, never pickle).

    config, model = hf.load("/models/Meta-Llama-3.1-8B", param_dtype="bfloat16")
    hf.save(model, config, "/tmp/exported")   # transformers.LlamaForCausalLM.from_pretrained
    hf.save(model, config, "/tmp/exported", tokenizer="tokenizer.model")   # + AutoTokenizer
    hf.save(reward_model, config, "/tmp/rm")  # LlamaForSequenceClassification, num_labels=1

Both directions stream: `load` reads one tensor at a time into the parameter it belongs to
and hands each finished parameter to JAX before reading the next, so host memory holds the model
once plus one (stacked) parameter; `save` writes shards of at most `max_shard_bytes`.
Our rotary layout is Hugging Face's ("rotate half"), so q/k weights need no permutation.
The tokenizer's files: tokenizer.py.
"""

import contextlib
import json
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from llama3_jax.checkpoint.hf.tokenizer import as_tokenizer, save_tokenizer
from llama3_jax.data.tokenizers import Tokenizer
from llama3_jax.errors import UserError
from llama3_jax.model import ModelConfig, RopeScaling, Transformer, new_module

_INDEX = "model.safetensors.index.json"


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """ModelConfig from a Hugging Face Llama `config.json` dict."""
  if hf.get("model_type", "llama") != "llama":
    raise ValueError(f"model_type is {hf.get('model_type')!r}; only Llama checkpoints load here")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ValueError(f"{flag}=true is not Llama 3; this loader supports bias-free layers only")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act={hf['hidden_act']!r}; Llama 3 uses silu (SwiGLU)")
  rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type == "llama3":
    scaling = RopeScaling(factor=float(rope["factor"]),
                          low_freq_factor=float(rope["low_freq_factor"]),
                          high_freq_factor=float(rope["high_freq_factor"]),
                          original_max_position=int(rope["original_max_position_embeddings"]))
  elif rope_type == "default":
    scaling = None
  else:
    raise ValueError(f"rope type {rope_type!r} is not supported; use 'llama3' or none")
  n_heads = hf["num_attention_heads"]
  fields = dict(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
      n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
      ffn_dim=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-5),
      rope_theta=float(hf.get("rope_theta") or rope.get("rope_theta", 500_000.0)),
      rope_scaling=scaling, max_seq_len=hf.get("max_position_embeddings", 8192),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      init_std=hf.get("initializer_range", 0.02))
  fields.update(overrides)
  return ModelConfig(**fields)


def config_to_hf(config: ModelConfig, dtype: str) -> dict:
  """A `config.json` dict that transformers' LlamaConfig reads back into the same model."""
  s = config.rope_scaling
  rope_scaling = None if s is None else {
      "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
      "high_freq_factor": s.high_freq_factor,
      "original_max_position_embeddings": s.original_max_position}
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": config.vocab_size, "hidden_size": config.d_model,
      "intermediate_size": config.ffn_dim, "num_hidden_layers": config.n_layers,
      "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
      "head_dim": config.head_dim, "hidden_act": "silu",
      "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
      "rope_theta": config.rope_theta, "rope_scaling": rope_scaling,
      "tie_word_embeddings": config.tie_embeddings, "attention_bias": False,
      "mlp_bias": False, "initializer_range": config.init_std, "torch_dtype": dtype,
  }


def _tensor_map(c: ModelConfig, reward: bool = False):
  """(our parameter path, HF name, stacked over layers, HF -> ours, ours -> HF) per tensor.

  HF linear weights are [out, in]; ours are [in, out] with heads split out. `reward`: a
  RewardModel, in HF's LlamaForSequenceClassification layout (no LM head; `score` [1, D]).
  """
  D, N, K, H = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
  same = lambda w: w
  layer = "model.layers.{}."
  rows = [
      (("embed_vd",), "model.embed_tokens.weight", False, same, same),
      (("final_norm", "scale"), "model.norm.weight", False, same, same),
      (("blocks", "attn_norm", "scale"), layer + "input_layernorm.weight", True, same, same),
      (("blocks", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", True, same,
       same),
      (("blocks", "attn", "wq_dnh"), layer + "self_attn.q_proj.weight", True,
       lambda w: w.T.reshape(D, N, H), lambda w: w.reshape(D, N * H).T),
      (("blocks", "attn", "wk_dkh"), layer + "self_attn.k_proj.weight", True,
       lambda w: w.T.reshape(D, K, H), lambda w: w.reshape(D, K * H).T),
      (("blocks", "attn", "wv_dkh"), layer + "self_attn.v_proj.weight", True,
       lambda w: w.T.reshape(D, K, H), lambda w: w.reshape(D, K * H).T),
      (("blocks", "attn", "wo_nhd"), layer + "self_attn.o_proj.weight", True,
       lambda w: w.T.reshape(N, H, D), lambda w: w.reshape(N * H, D).T),
      (("blocks", "mlp", "w_gate_df"), layer + "mlp.gate_proj.weight", True, np.transpose,
       np.transpose),
      (("blocks", "mlp", "w_up_df"), layer + "mlp.up_proj.weight", True, np.transpose,
       np.transpose),
      (("blocks", "mlp", "w_down_fd"), layer + "mlp.down_proj.weight", True, np.transpose,
       np.transpose),
  ]
  if reward:   # the backbone under "backbone", and the scalar head as a 1-label classifier
    rows = [(("backbone",) + ours, *rest) for ours, *rest in rows]
    rows.append((("head_d",), "score.weight", False, lambda w: w[0], lambda w: w[None]))
  elif not c.tie_embeddings:
    rows.append((("lm_head_dv",), "lm_head.weight", False, np.transpose, np.transpose))
  return rows


REWARD_ARCHITECTURE = "LlamaForSequenceClassification"


def _tensor_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
  """HF tensor name -> the safetensors file holding it (sharded with an index, or not)."""
  index = path / _INDEX
  if index.exists():
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise UserError(f"{index} has no 'weight_map'", "download or export the model again")
    return {name: path / file for name, file in weight_map.items()}
  files = sorted(path.glob("*.safetensors"))
  if not files:
    found = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(
        f"No *.safetensors files in {path} (found: {found[:10]}). Only safetensors checkpoints "
        "load; convert .bin/.pth files with transformers' save_pretrained first.")
  names = {}
  for file in files:
    with _reading(file), safetensors.safe_open(file, framework="numpy") as f:
      names.update({name: file for name in f.keys()})
  return names


def _read_json(file: pathlib.Path) -> dict:
  try:
    value = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise UserError(f"{file} is not valid JSON ({error})",
                    "download or export the model again") from None
  if not isinstance(value, dict):
    raise UserError(f"{file} holds a {type(value).__name__}, not a JSON object",
                    "download or export the model again")
  return value


@contextlib.contextmanager
def _reading(file: pathlib.Path):
  """A safetensors file that cannot be read (truncated, corrupt) named, not a Rust error."""
  try:
    yield
  except UserError:
    raise
  except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError
    raise UserError(f"{file} cannot be read ({type(error).__name__}: {error}); it is truncated "
                    "or corrupt", "download or export the model again") from None


def load(path, *, param_dtype: str | None = None, **overrides) -> tuple[ModelConfig, Transformer]:
  """Reads a Hugging Face Llama directory into (config, model).

  `param_dtype` sets the dtype the parameters are stored in (default: the config's, fp32);
  other keyword arguments override ModelConfig fields (e.g. `attention="blockwise"`).
  """
  path = pathlib.Path(path)
  if not (path / "config.json").exists():
    raise FileNotFoundError(f"{path / 'config.json'} not found: is {path} a Hugging Face "
                            "model directory?")
  if param_dtype is not None:
    overrides["param_dtype"] = param_dtype
  file = path / "config.json"
  try:
    config = config_from_hf(_read_json(file), **overrides)
  except UserError:
    raise
  except KeyError as error:
    raise UserError(f"{file} lacks the field {error}", "download or export the model "
                    "again (a Llama config.json names every size)") from None
  except (TypeError, ValueError) as error:
    raise UserError(f"{file}: {error}", "give a Llama 3 config.json") from None
  files = _tensor_files(path)
  reward = REWARD_ARCHITECTURE in _read_json(file).get("architectures", [])
  abstract = nnx.eval_shape(lambda: new_module(config, "reward" if reward else "lm"))
  graphdef, state = nnx.split(abstract)
  expected = nnx.to_pure_dict(state)
  values = {}

  with contextlib.ExitStack() as stack:
    handles = {}

    def read(name):
      if name not in files:
        raise UserError(f"tensor {name!r} is missing from the checkpoint in {path}",
                        "give a complete Llama checkpoint (every shard of the index)")
      file = files[name]
      with _reading(file):
        if file not in handles:
          handles[file] = stack.enter_context(safetensors.safe_open(file, framework="numpy"))
        return handles[file].get_tensor(name)

    if reward and not config.tie_embeddings:   # the backbone's unused LM head
      _set(values, ("backbone", "lm_head_dv"), jnp.zeros(
          _get(expected, ("backbone", "lm_head_dv")).shape, config.param_dtype))
    for our_path, name, stacked, to_ours, _ in _tensor_map(config, reward):
      target = _get(expected, our_path)
      if stacked:
        buffer = np.empty(target.shape, target.dtype)
        for i in range(config.n_layers):
          buffer[i] = _checked(to_ours, read(name.format(i)), target.shape[1:], name.format(i))
      else:
        buffer = _checked(to_ours, read(name), target.shape, name)
      _set(values, our_path, jnp.asarray(buffer, target.dtype))
      del buffer   # the host copy goes before the next parameter is read

  nnx.replace_by_pure_dict(state, values)
  return config, nnx.merge(graphdef, state)


def save(model: Transformer, config: ModelConfig, path, *, dtype: str | None = None,
         max_shard_bytes: int = 5 * 2**30, overwrite: bool = False,
         tokenizer: Tokenizer | str | os.PathLike | None = None) -> None:
  """Writes `model` as a Hugging Face Llama directory (config.json + safetensors shards).

  `tokenizer` (one of ours or the path of its file) adds the tokenizer files (`save_tokenizer`).
  The directory is written beside `path` and renamed into place at the end, so an interrupted
  save never leaves a half-written checkpoint at `path`.
  """
  path = pathlib.Path(path)
  if path.exists() and any(path.iterdir()) and not overwrite:
    raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
  if tokenizer is not None:
    tokenizer = as_tokenizer(tokenizer)
    if tokenizer.vocab_size > config.vocab_size:
      raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                       f"{config.vocab_size} embeddings; pass the tokenizer the model was "
                       "trained with")
  dtype = dtype or config.param_dtype
  np_dtype = jnp.dtype(dtype)
  reward = hasattr(model, "head_d")   # a RewardModel (llama3_jax/posttrain/reward.py)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
  try:
    shards, shard, shard_bytes = [], {}, 0

    def flush():
      nonlocal shard, shard_bytes
      if shard:
        file = tmp / f"shard-{len(shards):05d}.safetensors"
        safetensors.numpy.save_file(shard, str(file), metadata={"format": "pt"})
        shards.append((file, list(shard)))
      shard, shard_bytes = {}, 0

    def add(name, array):
      nonlocal shard_bytes
      array = np.ascontiguousarray(array.astype(np_dtype))
      if shard and shard_bytes + array.nbytes > max_shard_bytes:
        flush()
      shard[name] = array
      shard_bytes += array.nbytes

    for our_path, name, stacked, _, to_hf in _tensor_map(config, reward):
      host = np.asarray(jax.device_get(_get(params, our_path)))
      if stacked:
        for i in range(config.n_layers):
          add(name.format(i), to_hf(host[i]))
      else:
        add(name, to_hf(host))
      del host
    flush()

    weight_map = {}
    for i, (file, names) in enumerate(shards):
      final = ("model.safetensors" if len(shards) == 1
               else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
      file.rename(tmp / final)
      weight_map.update({name: final for name in names})
    if len(shards) > 1:
      total = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
      (tmp / _INDEX).write_text(json.dumps(
          {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf_config = config_to_hf(config, dtype)
    if reward:
      hf_config.update(architectures=[REWARD_ARCHITECTURE], num_labels=1,
                       llama3_jax_head="reward: one scalar per sequence, read at its last "
                       "token (a response's <|eot_id|>); -log sigmoid(r_better - r_worse)")
    if tokenizer is not None:
      # transformers' generate stops at these: end of text, and end of turn where the tokenizer
      # has it (the chat format's).
      stops = [tokenizer.eos_id]
      try:
        stops.append(tokenizer.special_id("<|eot_id|>"))
      except (ValueError, KeyError):
        pass
      hf_config.update(bos_token_id=tokenizer.bos_id, eos_token_id=stops)
      if reward:   # HF reads a classifier at the last token that is not padding
        hf_config.update(pad_token_id=tokenizer.eos_id)
      (tmp / "generation_config.json").write_text(json.dumps(
          {"bos_token_id": tokenizer.bos_id, "eos_token_id": stops}, indent=2))
      save_tokenizer(tokenizer, tmp, max_seq_len=config.max_seq_len)
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
    if path.exists():   # overwrite: swap directories, then drop the old one
      old = pathlib.Path(tempfile.mkdtemp(prefix=path.name + ".old-", dir=path.parent))
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _checked(to_ours, tensor: np.ndarray, shape, name: str) -> np.ndarray:
  out = to_ours(tensor)
  if out.shape != tuple(shape):
    raise ValueError(f"Tensor {name!r} has shape {tensor.shape}, which does not fit the "
                     f"config.json (expected {tuple(shape)} after conversion)")
  return out


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
