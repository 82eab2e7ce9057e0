"""Hugging Face Llama weights in and out (safetensors only, never pickle).

    config, model = hf.load("/models/Meta-Llama-3.1-8B", param_dtype="bfloat16")
    hf.save(model, config, "/tmp/exported")   # transformers.LlamaForCausalLM.from_pretrained
    hf.save(model, config, "/tmp/exported", tokenizer="tokenizer.model")   # + AutoTokenizer
    hf.save(reward_model, config, "/tmp/rm")  # LlamaForSequenceClassification, num_labels=1

    config, model = hf.load(path, mesh=mesh)  # sharded as read: fsdp, tensor... (rules.py)

Neither direction ever holds the whole model in one place. `load` (`read_params`) reads, per
process, only the slices of each tensor that its devices keep; `save` gathers one tensor (one
layer of a stacked parameter) at a time from the sharded model and process 0 writes it into
shards of at most `max_shard_bytes`. Where each parameter lies in HF's files: layout.py; the
tokenizer's files: tokenizer.py.
"""

import contextlib
import functools
import json
import math
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

from llama3_jax.checkpoint.hf.layout import Tensor, read_part, tensor_map
from llama3_jax.checkpoint.hf.tokenizer import as_tokenizer, save_tokenizer
from llama3_jax.checkpoint.manager import _barrier
from llama3_jax.checkpoint.target import kind_of, model_target
from llama3_jax.data.tokenizers import Tokenizer
from llama3_jax.errors import UserError
from llama3_jax.model import ModelConfig, RopeScaling, Transformer

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


def read_config(path, **overrides) -> tuple[ModelConfig, str]:
  """(ModelConfig, kind) of a Hugging Face Llama directory: kind "reward" for a
  LlamaForSequenceClassification (our RewardModel), else "lm". `overrides`: ModelConfig fields
  (e.g. `param_dtype`, `attention="blockwise"`)."""
  path = pathlib.Path(path)
  file = path / "config.json"
  if not file.exists():
    raise FileNotFoundError(f"{file} not found: is {path} a Hugging Face model directory?")
  fields = _read_json(file)
  try:
    config = config_from_hf(fields, **overrides)
  except UserError:
    raise
  except KeyError as error:
    raise UserError(f"{file} lacks the field {error}", "download or export the model "
                    "again (a Llama config.json names every size)") from None
  except (TypeError, ValueError) as error:
    raise UserError(f"{file}: {error}", "give a Llama 3 config.json") from None
  return config, "reward" if REWARD_ARCHITECTURE in fields.get("architectures", []) else "lm"


def load(path, *, param_dtype: str | None = None, mesh=None, rules=None,
         **overrides) -> tuple[ModelConfig, Transformer]:
  """Reads a Hugging Face Llama directory into (config, model).

  `param_dtype` sets the dtype the parameters are stored in (default: the config's, fp32);
  `mesh` (and `rules`, default the model's table) shards them as they are read (default: whole,
  on this process's first device); other keyword arguments override ModelConfig fields.
  """
  if param_dtype is not None:
    overrides["param_dtype"] = param_dtype
  config, kind = read_config(path, **overrides)
  graphdef, target = model_target(config, kind, mesh, rules)
  return config, nnx.merge(graphdef, read_params(path, target))


def read_params(path, target) -> nnx.State:
  """The parameters of the Hugging Face directory `path`, read straight onto `target` (the
  module's state as ShapeDtypeStructs with shardings, checkpoint/target.py).

  Each process reads only the slices of each tensor that its devices hold (safetensors'
  `get_slice`), one device's part at a time, and assembles the global arrays from them
  (`jax.make_array_from_single_device_arrays`): a process holds its devices' shards plus one
  part and a block of one tensor's rows. Every tensor's name and shape is checked before any
  is read.
  """
  path = pathlib.Path(path)
  files = _tensor_files(path)
  reward = kind_of(target) == "reward"
  expected = nnx.to_pure_dict(target)
  backbone = expected["backbone"] if reward else expected
  rows = tensor_map(lm_head="lm_head_dv" in backbone, reward=reward)
  _check_tensors(path, files, rows, expected)
  values = {}
  if reward and "lm_head_dv" in backbone:   # the backbone's LM head: unused, zeros
    x = backbone["lm_head_dv"]
    _set(values, ("backbone", "lm_head_dv"), _assemble(
        x, lambda index: np.zeros(_part_shape(x.shape, index), x.dtype)))
  for row in sorted(rows, key=lambda row: -math.prod(_get(expected, row.path).shape)):
    x = _get(expected, row.path)
    _set(values, row.path, _assemble(x, functools.partial(_read, files, row, x.shape, x.dtype)))
  state = jax.tree.map(lambda x: x, target)   # a copy of the target's structure, then filled
  nnx.replace_by_pure_dict(state, values)
  return state


def _assemble(x: jax.ShapeDtypeStruct, read) -> jax.Array:
  """The array `x` describes (shape, dtype, sharding) from its parts, `read(index)`: one part on
  the host at a time, read once however many of this process's devices hold it, put on each of
  them and dropped before the next part is read (waited for: a transfer in flight holds it)."""
  holders = {}
  for device, index in x.sharding.addressable_devices_indices_map(x.shape).items():
    key = tuple(s.indices(n)[:2] for s, n in zip(index, x.shape))
    holders.setdefault(key, []).append(device)
  arrays = []
  for key, devices in holders.items():
    host = read(tuple(slice(a, b) for a, b in key))
    arrays += jax.block_until_ready([jax.device_put(host, device) for device in devices])
    del host
  return jax.make_array_from_single_device_arrays(x.shape, x.sharding, arrays)


def _read(files: dict, row: Tensor, shape, dtype, index) -> np.ndarray:
  """Our parameter `row` of `shape` at `index`, as `dtype`, read from the HF tensor(s) holding
  it (stacked: one per layer)."""
  if not row.stacked:
    return np.ascontiguousarray(read_part(_file_reader(files[row.name], row.name), row.layout,
                                          shape, index), dtype)
  (first, stop), out = index[0].indices(shape[0])[:2], np.empty(_part_shape(shape, index), dtype)
  for i in range(first, stop):
    name = row.name.format(i)
    out[i - first] = read_part(_file_reader(files[name], name), row.layout, shape[1:], index[1:])
  return out


# Rows of a tensor read through one opening of its file: a column slice touches every page of
# the rows it crosses, and the mapped pages count as the process's memory until the file is
# closed, so a large tensor is read a block of rows at a time (16 MB of fp32).
_CHUNK_ELEMENTS = 4 * 2**20


def _file_reader(file: pathlib.Path, name: str):
  """slices -> the tensor `name` of the safetensors `file` at those slices (safetensors'
  `get_slice`), its rows read a block at a time, the file open only while a block is read."""
  def read(slices):
    with _reading(file), safetensors.safe_open(file, framework="numpy") as f:
      tensor = f.get_slice(name)
      shape = tensor.get_shape()
      first, stop = slices[0].indices(shape[0])[:2]
      step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
      if stop - first <= step:
        return tensor[slices]
    out = None
    for start in range(first, stop, step):
      with _reading(file), safetensors.safe_open(file, framework="numpy") as f:
        block = f.get_slice(name)[(slice(start, min(start + step, stop)),) + slices[1:]]
      if out is None:
        out = np.empty((stop - first,) + block.shape[1:], block.dtype)
      out[start - first:start - first + len(block)] = block
    return out
  return read


def _part_shape(shape, index) -> tuple[int, ...]:
  return tuple(len(range(*s.indices(n))) for s, n in zip(index, shape))


def _check_tensors(path: pathlib.Path, files: dict, rows: list[Tensor], expected) -> None:
  """Every tensor the model needs is in `files` with the shape our config implies (read from
  the safetensors headers only)."""
  handles = {}
  with contextlib.ExitStack() as stack:
    for row in rows:
      shape = _get(expected, row.path).shape
      want = row.layout.hf_shape(shape[1:] if row.stacked else shape)
      for name in row.names(shape[0] if row.stacked else 1):
        if name not in files:
          raise UserError(f"tensor {name!r} is missing from the checkpoint in {path}",
                          "give a complete Llama checkpoint (every shard of the index)")
        file = files[name]
        with _reading(file):
          if file not in handles:
            handles[file] = stack.enter_context(safetensors.safe_open(file, framework="numpy"))
          found = tuple(handles[file].get_slice(name).get_shape())
        if found != want:
          raise UserError(f"tensor {name!r} has shape {found}, which does not fit the "
                          f"config.json (expected {want})",
                          "download or export the model again")


def save(model: Transformer, config: ModelConfig, path, *, dtype: str | None = None,
         max_shard_bytes: int = 5 * 2**30, overwrite: bool = False,
         tokenizer: Tokenizer | str | os.PathLike | None = None) -> None:
  """Writes `model` as a Hugging Face Llama directory (config.json + safetensors shards).

  `tokenizer` (one of ours or the path of its file) adds the tokenizer files (`save_tokenizer`).
  The model may be sharded over any mesh and processes: every process takes part in gathering
  each tensor, process 0 writes, and all return once the directory is in place. It is written
  beside `path` and renamed into place at the end, so an interrupted save never leaves a
  half-written checkpoint at `path`.
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
  reward = hasattr(model, "head_d")   # a RewardModel (llama3_jax/model/reward.py)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  primary = jax.process_index() == 0
  tmp = None
  if primary:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
  try:
    _write_tensors(params, tensor_map(lm_head=not config.tie_embeddings, reward=reward),
                   config.n_layers, tmp, np.dtype(jnp.dtype(dtype)), max_shard_bytes)
    if primary:
      hf_config = config_to_hf(config, dtype)
      if reward:
        hf_config.update(architectures=[REWARD_ARCHITECTURE], num_labels=1,
                         llama3_jax_head="reward: one scalar per sequence, read at its last "
                         "token (a response's <|eot_id|>); -log sigmoid(r_better - r_worse)")
      if tokenizer is not None:
        _write_tokenizer(tokenizer, tmp, hf_config, reward, config.max_seq_len)
      (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
      if path.exists():   # overwrite: swap directories, then drop the old one
        old = pathlib.Path(tempfile.mkdtemp(prefix=path.name + ".old-", dir=path.parent))
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
      else:
        os.replace(tmp, path)
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  _barrier(f"hf_save:{path}")


def _write_tensors(params: dict, rows: list[Tensor], n_layers: int, out: pathlib.Path | None,
                   dtype: np.dtype, max_shard_bytes: int) -> None:
  """Gathers each HF tensor in turn (every process) and writes it into safetensors shards of at
  most `max_shard_bytes` in `out` (process 0; None elsewhere), with an index file where there
  are several shards."""
  shards, shard, shard_bytes = [], {}, 0

  def flush():
    nonlocal shard, shard_bytes
    if shard:
      file = out / f"shard-{len(shards):05d}.safetensors"
      safetensors.numpy.save_file(shard, str(file), metadata={"format": "pt"})
      shards.append((file, list(shard)))
    shard, shard_bytes = {}, 0

  for row in rows:
    x = _get(params, row.path)
    for i, name in enumerate(row.names(n_layers)):
      host = gathered(x, i if row.stacked else None)
      if out is None:
        continue
      array = np.ascontiguousarray(row.layout.to_hf(host).astype(dtype))
      del host
      if shard and shard_bytes + array.nbytes > max_shard_bytes:
        flush()
      shard[name] = array
      shard_bytes += array.nbytes
  if out is None:
    return
  flush()
  weight_map = {}
  for i, (file, names) in enumerate(shards):
    final = ("model.safetensors" if len(shards) == 1
             else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
    file.rename(out / final)
    weight_map.update({name: final for name in names})
  if len(shards) > 1:
    total = sum((out / f).stat().st_size for f in set(weight_map.values()))
    (out / _INDEX).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _write_tokenizer(tokenizer: Tokenizer, out: pathlib.Path, hf_config: dict, reward: bool,
                     max_seq_len: int) -> None:
  """The tokenizer's files, and the ids transformers reads from config.json and
  generation_config.json."""
  # transformers' generate stops at these: end of text, and end of turn where the tokenizer
  # has it (the chat format's).
  stops = [tokenizer.eos_id]
  try:
    stops = list(dict.fromkeys(stops + [tokenizer.special_id("<|eot_id|>")]))
  except (ValueError, KeyError):
    pass
  hf_config.update(bos_token_id=tokenizer.bos_id, eos_token_id=stops)
  if reward:   # HF reads a classifier at the last token that is not padding
    hf_config.update(pad_token_id=tokenizer.eos_id)
  (out / "generation_config.json").write_text(json.dumps(
      {"bos_token_id": tokenizer.bos_id, "eos_token_id": stops}, indent=2))
  save_tokenizer(tokenizer, out, max_seq_len=max_seq_len)


def gathered(x: jax.Array, layer: int | None = None) -> np.ndarray:
  """`x` (or its `layer`) whole in host memory: gathered from its shards one tensor at a time,
  on every process (the gather is a collective), so that no device holds more than it."""
  if x.is_fully_addressable:
    return np.asarray(x if layer is None else x[layer])
  whole = jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec())
  part = _take(whole)(x, 0 if layer is None else layer, layer is not None)
  return np.asarray(part.addressable_data(0))


@functools.lru_cache
def _take(sharding):
  return jax.jit(lambda x, i, stacked: x[i] if stacked else x, static_argnums=2,
                 out_shardings=sharding)


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
