"""The model of a training run, read back for generation, evaluation or export.

    config, model = load_model("workdirs/pretrain")                 # the newest checkpoint
    config, model = load_model("workdirs/pretrain", averaged=True)  # the anneal's average
    config, model = load_model("workdirs/pretrain/checkpoints/40")  # one step
    tokenizer = run_tokenizer("workdirs/pretrain")                   # what its data was made with

Only the parameters are read (Orbax partial restore: the optimizer's moments stay on disk); the
model config is the one saved in the checkpoint's meta, so no config file is needed.
"""

import json
import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx

from llama3_jax.checkpoint.averaging import (checkpoint_step_dir, restore_params,
                                             unreadable_as_user_error)
from llama3_jax.errors import UserError
from llama3_jax.model import ModelConfig, RopeScaling, Transformer


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
  """The tokenizer a run's training data was prepared with (its manifest names it)."""
  from llama3_jax.data import corpus
  from llama3_jax.data.prepare import read_manifest
  from llama3_jax.data.tokenizers import load_tokenizer
  step_dir = checkpoint_step_dir(pathlib.Path(path))
  config = json.loads((step_dir / "meta" / "metadata").read_text()).get("config", {})
  data = config.get("data", {})
  if data.get("synthetic"):
    raise ValueError(f"{path} was trained on synthetic data, which has no tokenizer; pass one "
                     "with --tokenizer")
  data_dir = data.get("path") or corpus.embedded_corpus()
  return load_tokenizer(read_manifest(data_dir)["tokenizer"]["path"])


def load_model(path, *, averaged: bool = False, device=None) -> tuple[ModelConfig, Transformer]:
  """(config, model) of a workdir or checkpoint step directory, on `device` (default: the
  first). `averaged`: the Polyak average of the final anneal (WORKDIR/averaged_params)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist; give a training workdir or a "
                            "checkpoint step directory")
  step_dir = checkpoint_step_dir(path)
  config = model_config_of(step_dir)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
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
