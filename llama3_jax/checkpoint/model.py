"""The model of a training run, read back for generation, evaluation or export.

    config, model = load_model("workdirs/pretrain")                 # the newest checkpoint
    config, model = load_model("workdirs/pretrain", averaged=True)  # the anneal's average
    config, model = load_model("workdirs/pretrain/checkpoints/380")  # one step
    config, rm = load_model("workdirs/reward_model", kind="reward")  # a RewardModel
    tokenizer = run_tokenizer("workdirs/pretrain")                   # what its data was made with

Only the parameters are read (Orbax partial restore: the optimizer's moments stay on disk); the
model config is the one saved in the checkpoint's meta, so no config file is needed.

    config = init_model_config(path)            # a workdir, a step, or a Hugging Face directory
    params = init_params(path, model_config)    # what a fine-tuning run starts from
"""

import json
import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx

from llama3_jax.checkpoint.averaging import (checkpoint_step_dir, restore_params,
                                             unreadable_as_user_error)
from llama3_jax.errors import UserError
from llama3_jax.model import ModelConfig, RopeScaling, Transformer, new_module


def model_config_of(step_dir: pathlib.Path) -> ModelConfig:
  """The resolved model config a checkpoint step was saved with."""
  meta_path = step_dir / "meta" / "metadata"
  if not meta_path.exists():
    raise FileNotFoundError(f"{step_dir} has no meta/metadata; is it a checkpoint written by "
                            "the training loop?")
  try:
    fields = json.loads(meta_path.read_text()).get("model")
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
    raise UserError(f"{meta_path} is not a checkpoint's JSON meta ({error})",
                    "give another checkpoint step directory") from None
  if fields is None:
    raise ValueError(f"{step_dir} predates checkpoints that record their model; export it with "
                     "the version of llama3_jax that wrote it")
  if fields.get("rope_scaling"):
    fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
  fields["remat_names"] = tuple(fields.get("remat_names", ()))
  return ModelConfig(**fields)


def run_tokenizer(path):
  """The tokenizer a run's training data was prepared with: the one its checkpoints record
  (path and SHA-256), else the one its data's manifest names."""
  from llama3_jax.data import corpus
  from llama3_jax.data.prepare import read_manifest
  from llama3_jax.data.tokenizers import load_tokenizer
  from llama3_jax.data.conversations.prepared import is_conversation_data, sha256
  step_dir = checkpoint_step_dir(pathlib.Path(path))
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  recorded = meta.get("tokenizer")
  if recorded:
    tokenizer_path = pathlib.Path(recorded["path"])
    if not tokenizer_path.exists() or sha256(tokenizer_path) != recorded["sha256"]:
      raise ValueError(f"{path} was trained with the tokenizer {tokenizer_path} (sha256 "
                       f"{recorded['sha256'][:12]}...), which is gone or has changed since; "
                       "pass that tokenizer explicitly (e.g. --tokenizer)")
    return load_tokenizer(tokenizer_path)
  data = meta.get("config", {}).get("data", {})
  if data.get("synthetic"):
    raise ValueError(f"{path} was trained on synthetic data, which has no tokenizer; pass one "
                     "with --tokenizer")
  data_dir = pathlib.Path(data.get("path") or corpus.embedded_corpus())
  manifest = (json.loads((data_dir / "manifest.json").read_text())
              if is_conversation_data(data_dir) else read_manifest(data_dir))
  return load_tokenizer(manifest["tokenizer"]["path"])


def model_kind_of(step_dir: pathlib.Path) -> str:
  """What a checkpoint step holds: "lm" (a Transformer) or "reward" (a RewardModel)."""
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  return meta.get("model_kind", "lm")


def load_model(path, *, averaged: bool = False, device=None,
               kind: str = "lm") -> tuple[ModelConfig, Transformer]:
  """(config, model) of a workdir or checkpoint step directory, on `device` (default: the
  first). `averaged`: the Polyak average of the final anneal (WORKDIR/averaged_params).
  `kind`: "lm" for a language model, "reward" for a reward model (RewardModel)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist; give a training workdir or a "
                            "checkpoint step directory")
  step_dir = checkpoint_step_dir(path)
  config = model_config_of(step_dir)
  saved = model_kind_of(step_dir)
  if saved != kind:
    what = {"lm": "a language model (policy)", "reward": "a reward model"}
    raise UserError(f"{path} holds {what.get(saved, saved)}, not {what.get(kind, kind)}",
                    f"give {what.get(kind, kind)} run" + (
                        " (python -m experiments.reward_model trains one)" if kind == "reward"
                        else ""))
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: new_module(config, kind)))
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        abstract)
  if averaged:
    source = path / "averaged_params"
    if not source.exists():
      raise FileNotFoundError(f"{source} does not exist: the run has not finished its anneal "
                              "(drop --averaged to use the newest checkpoint)")
    with unreadable_as_user_error(source):
      params = ocp.StandardCheckpointer().restore(source.resolve(), target)
  else:
    params = restore_params(step_dir, target)
  return config, nnx.merge(graphdef, params)


def is_hf_dir(path) -> bool:
  """A Hugging Face model directory (config.json), not a training workdir."""
  path = pathlib.Path(path)
  return (path / "config.json").exists() and not (path / "checkpoints").exists()


def init_model_config(path) -> ModelConfig:
  """The model at `path`: a training workdir, a checkpoint step or a Hugging Face directory."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"init.path {path} does not exist; give a training workdir, a "
                            "checkpoint step directory or a Hugging Face model directory")
  if is_hf_dir(path):
    from llama3_jax.checkpoint.hf import config_from_hf
    return config_from_hf(json.loads((path / "config.json").read_text()))
  return model_config_of(checkpoint_step_dir(path))


def init_params(path, model_config: ModelConfig, averaged: bool = False) -> nnx.State:
  """The parameters at `path` for a run of `model_config` (shapes checked, dtype cast)."""
  path = pathlib.Path(path)
  if is_hf_dir(path):
    from llama3_jax.checkpoint import hf
    _, model = hf.load(path, param_dtype=model_config.param_dtype)
  else:
    _, model = load_model(path, averaged=averaged)
  params = nnx.state(model)
  wanted = nnx.state(nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0))))
  got = jax.tree.map(lambda x: x.shape, params)
  if jax.tree.map(lambda x: x.shape, wanted) != got:
    raise ValueError(f"init.path {path} holds a model of other shapes than this run's; use "
                     'model.size="init" (its model) or overrides that keep the shapes')
  return jax.tree.map(lambda x, w: x.astype(w.dtype), params, wanted)


def model_and_tokenizer(checkpoint=None, hf_dir=None, averaged: bool = False, tokenizer=None):
  """(model, tokenizer) from a workdir or step (`checkpoint`) or a Hugging Face directory;
  `tokenizer`: a tokenizer file instead of the model's own."""
  from llama3_jax.checkpoint import hf
  from llama3_jax.data.tokenizers import load_tokenizer
  if hf_dir:
    _, model = hf.load(hf_dir)
    return model, load_tokenizer(tokenizer) if tokenizer else hf.load_tokenizer(hf_dir)
  _, model = load_model(checkpoint, averaged=averaged)
  return model, load_tokenizer(tokenizer) if tokenizer else run_tokenizer(checkpoint)
