"""A model read back, from a training run or a Hugging Face directory, onto any mesh.

    config, model = load_model("workdirs/pretrain")                 # the newest checkpoint
    config, model = load_model("workdirs/pretrain", averaged=True)  # the anneal's average
    config, model = load_model("workdirs/pretrain/checkpoints/380")  # one step
    config, rm = load_model("workdirs/reward_model", kind="reward")  # a RewardModel
    config, model = load_model("workdirs/pretrain", mesh=mesh)       # sharded as it is read
    tokenizer = run_tokenizer("workdirs/pretrain")                   # what its data was made with
    config = init_model_config(path)       # a workdir, a step, or a Hugging Face directory

Only the parameters are read (Orbax partial restore: the optimizer's moments stay on disk); the
model config is the one saved in the checkpoint's meta, so no config file is needed.

One function reads parameters from anywhere straight onto target shardings, each process only
its devices' shards (no process or device ever holds the whole model):

    params = load_params(path, target)    # a workdir, a step, averaged_params or an HF directory
    # target: the module's abstract state with shardings (checkpoint/target.py, or a run's
    # Setup.pretrained_target); a model of other shapes is refused before anything is read.
"""

import dataclasses
import json
import pathlib

import orbax.checkpoint as ocp
from flax import nnx

from llama3_jax.checkpoint.averaging import (checkpoint_step_dir, restore_params, saved_params,
                                             unreadable_as_user_error)
from llama3_jax.checkpoint.target import kind_of, model_target, shapes
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
  meta = step_dir / "meta" / "metadata"
  return json.loads(meta.read_text()).get("model_kind", "lm") if meta.exists() else "lm"


_WHAT = {"lm": "a language model (policy)", "reward": "a reward model"}


def _check_kind(path, saved: str, kind: str) -> None:
  if saved != kind:
    raise UserError(f"{path} holds {_WHAT.get(saved, saved)}, not {_WHAT.get(kind, kind)}",
                    f"give {_WHAT.get(kind, kind)} run" + (
                        " (python -m experiments.reward_model trains one)" if kind == "reward"
                        else ""))


def check_model_kind(path, kind: str = "lm") -> None:
  """The model at `path` (a workdir, a checkpoint step or a Hugging Face directory) is of
  `kind` ("lm" or "reward"), or a UserError saying what it holds (its metadata only)."""
  path = pathlib.Path(path)
  if is_hf_dir(path):
    from llama3_jax.checkpoint import hf
    saved = hf.read_config(path)[1]
  else:
    saved = model_kind_of(checkpoint_step_dir(path))
  _check_kind(path, saved, kind)


def _check_shapes(path, saved, target) -> None:
  """A model of other shapes than `target` (another size, vocabulary, head), refused before
  anything is read, naming the first parameter that differs."""
  found, wanted = shapes(saved), shapes(target)
  if found != wanted:
    name = next((n for n in wanted if found.get(n) != wanted[n]), None) or next(iter(found))
    raise UserError(f"{path} holds a model of other shapes than the one it is read into "
                    f"({name}: {found.get(name, 'absent')}, not {wanted.get(name, 'absent')})",
                    "give a checkpoint of this model; a run starting from it can take its "
                    'shapes with model.size="init"')


def load_params(path, target, *, averaged: bool = False) -> nnx.State:
  """The parameters at `path` (a workdir: its newest checkpoint, or with `averaged` its anneal's
  average; a checkpoint step directory; a Hugging Face directory), read straight onto `target`:
  the module's state as ShapeDtypeStructs carrying the shardings and dtypes wanted
  (checkpoint/target.py). Each process reads only its devices' shards (Orbax restores onto the
  shardings; Hugging Face tensors are read by slices, checkpoint/hf/weights.read_params). A
  model of another kind or other shapes is a UserError before any array is read."""
  return _reader(path, target, averaged)()


def _reader(path, target, averaged: bool):
  """Checks that `path` holds a model like `target` (metadata only); () -> its parameters."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist; give a training workdir, a "
                            "checkpoint step directory or a Hugging Face model directory")
  kind = kind_of(target)
  check_model_kind(path, kind)
  if is_hf_dir(path):
    from llama3_jax.checkpoint import hf
    config, _ = hf.read_config(path)
    _check_shapes(path, nnx.state(nnx.eval_shape(lambda: new_module(config, kind))), target)
    return lambda: hf.read_params(path, target)
  step_dir = checkpoint_step_dir(path)
  if not averaged:
    _check_shapes(path, saved_params(step_dir), target)
    return lambda: restore_params(step_dir, target)
  source = (path / "averaged_params").resolve()
  if not source.exists():
    raise FileNotFoundError(f"{source} does not exist: the run has not finished its anneal "
                            "(drop --averaged to use the newest checkpoint)")
  checkpointer = ocp.StandardCheckpointer()
  with unreadable_as_user_error(source):
    _check_shapes(path, checkpointer.metadata(source).item_metadata.tree, target)

  def restore():
    with unreadable_as_user_error(source):
      return checkpointer.restore(source, target)
  return restore


def load_model(path, *, averaged: bool = False, kind: str = "lm", mesh=None, rules=None,
               device=None) -> tuple[ModelConfig, Transformer]:
  """(config, model) of a workdir or checkpoint step directory. `averaged`: the Polyak average
  of the final anneal (WORKDIR/averaged_params). `kind`: "lm" for a language model, "reward"
  for a reward model (RewardModel). `mesh` (and `rules`, default the model's table for it):
  the parameters sharded over it as they are read; without one, whole on `device` (default:
  this process's first)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist; give a training workdir or a "
                            "checkpoint step directory")
  config = model_config_of(checkpoint_step_dir(path))
  graphdef, target = model_target(config, kind, mesh, rules, device=device)
  return config, nnx.merge(graphdef, load_params(path, target, averaged=averaged))


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
    from llama3_jax.checkpoint.hf import read_config
    return read_config(path)[0]
  return model_config_of(checkpoint_step_dir(path))


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A starting model, checked but not read yet: `Setup.init_state` reads it (`load_params`)
  straight onto the run's own layout, so no device ever holds more than its shard of it."""
  path: pathlib.Path
  averaged: bool = False


def pretrained(path, model_config: ModelConfig, averaged: bool = False) -> Pretrained:
  """What a run of `model_config` starts from: the model at `path`, its kind and shapes
  checked now (metadata only: a UserError naming the fix), its parameters read later by
  `Setup.init_state` onto the run's layout, cast to the run's dtype."""
  _reader(path, nnx.state(nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))),
          averaged)
  return Pretrained(pathlib.Path(path), averaged)


def model_and_tokenizer(checkpoint=None, hf_dir=None, averaged: bool = False, tokenizer=None,
                        mesh=None):
  """(model, tokenizer) from a workdir or step (`checkpoint`) or a Hugging Face directory;
  `tokenizer`: a tokenizer file instead of the model's own; `mesh`: shard the model over it as
  it is read (default: whole on this process's first device)."""
  from llama3_jax.checkpoint import hf
  from llama3_jax.data.tokenizers import load_tokenizer
  if hf_dir:
    check_model_kind(hf_dir, "lm")   # as load_model does for checkpoints
    _, model = hf.load(hf_dir, mesh=mesh)
    return model, load_tokenizer(tokenizer) if tokenizer else hf.load_tokenizer(hf_dir)
  _, model = load_model(checkpoint, averaged=averaged, mesh=mesh)
  return model, load_tokenizer(tokenizer) if tokenizer else run_tokenizer(checkpoint)
