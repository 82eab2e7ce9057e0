"""What launchers share (not a launcher): the start of a job, the default runs they start from.

Every launcher that touches JAX calls `start_job` (or `start_jax` with a training config) first:
the one start-up path (llama3_jax/runtime/job.py), which also joins a multi-process job
(launch.local, SLURM, Kubernetes).
"""

import pathlib

PRETRAIN = pathlib.Path("workdirs/pretrain")


def start_job(cpu_devices: int | None = 8, compilation_cache: bool = True):
  """JAX configured and the job joined, before JAX's backend starts: `cpu_devices` fake CPU
  devices per process (a launcher's JAX_NUM_CPU_DEVICES, e.g. launch.local
  --devices-per-process, wins), the persistent compilation cache, one log line per message."""
  from llama3_jax.data.corpus import cache_dir
  from llama3_jax.runtime import job
  return job.start(cpu_devices, compilation_cache=cache_dir() / "xla" if compilation_cache
                   else None)


def start_jax(cfg):
  """`start_job` for a training launcher's config (its runtime section)."""
  return start_job(cfg.runtime.cpu_devices, cfg.runtime.get("compilation_cache", True))


def missing_run(path) -> bool:
  """Whether `path` has no checkpoints yet, as every process of the job sees it before any of
  them starts writing there."""
  from llama3_jax.runtime import job
  missing = not (pathlib.Path(path) / "checkpoints").exists()
  job.barrier(f"looked for {path}")
  return missing


def ensure_pretrained(path=PRETRAIN) -> pathlib.Path:
  """`path`, the default pre-training run, trained first if it has no checkpoints."""
  path = pathlib.Path(path)
  if missing_run(path):
    from llama3_jax.runtime import job
    job.say(f"no run in {path}: training the default model first (python -m "
            "experiments.pretrain)")
    from experiments.configs.llama3_debug import get_config
    from llama3_jax.train.config import run_config
    from llama3_jax.train.loop import train
    train(run_config(get_config()), path)
  return path


def model_config_at(path, name: str = "checkpoint"):
  """The ModelConfig of a workdir, a checkpoint step or a Hugging Face directory, read before
  any array (to lay out the mesh the model is read onto); `name` names `path` in the error."""
  from llama3_jax.checkpoint.model import init_model_config
  if not pathlib.Path(path).exists():
    raise FileNotFoundError(f"{name} {path} does not exist; give a training workdir, a "
                            "checkpoint step directory or a Hugging Face model directory")
  return init_model_config(path)


MESH_HELP = ("axis sizes of the mesh the model is sharded over, e.g. tensor=2 (fsdp fills the "
             "rest; default: all devices of the job with FSDP)")


def inference_model(checkpoint, hf_dir, averaged: bool, tokenizer_path, mesh: str = ""):
  """(model, tokenizer) for evaluation and generation: a workdir or checkpoint step (default:
  the default pre-training run, trained first if absent) or a Hugging Face directory, its
  parameters sharded over the job's devices as they are read (`mesh`: axis sizes, fsdp fills
  the rest). Every process of a job calls it and holds only its devices' shards."""
  from llama3_jax.checkpoint.model import model_and_tokenizer
  from llama3_jax.errors import UserError
  from llama3_jax.infer.placement import Placement
  from llama3_jax.sharding import MeshConfig, parse_mesh
  sizes = parse_mesh(mesh)   # a bad --mesh is refused before anything is read
  if not hf_dir and checkpoint is None:
    checkpoint = ensure_pretrained()
  config = model_config_at(hf_dir or checkpoint, "--hf" if hf_dir else "checkpoint")
  try:
    placement = Placement.make(MeshConfig(**sizes), config)
  except ValueError as error:
    raise UserError(f"--mesh {mesh or '(all devices, fsdp)'}: {error}",
                    "give --mesh axis sizes that fit the model and the job's devices") from None
  model, tokenizer = model_and_tokenizer(checkpoint, hf_dir, averaged, tokenizer_path,
                                         mesh=placement.mesh)
  if tokenizer.vocab_size > model.config.vocab_size:
    raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                    f"vocabulary of {model.config.vocab_size}", "pass the model's --tokenizer")
  return model, tokenizer


STAGE_FILE = "stage.json"   # what a post-training stage's workdir holds: {"kind": "sft"}
RUN_NAMES = {"sft": "an SFT run", "dpo": "a DPO run", "reward": "a reward model run",
             "post-training": "a post-training run", "pre-training": "a pre-training run"}


def trained_in(workdir) -> str | None:
  """What trained in `workdir`: a post-training stage's kind (sft, dpo, reward; "post-training"
  for a stage's run older than its stage.json), "pre-training", or None (no checkpoints). Read
  from files only, before anything is restored: a run given the wrong kind of workdir was
  blamed on data.streams, or had its valid checkpoints set aside as corrupt."""
  import json
  workdir = pathlib.Path(workdir)
  steps = [p for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
  if not steps:
    return None
  if (workdir / STAGE_FILE).is_file():
    return json.loads((workdir / STAGE_FILE).read_text()).get("kind", "post-training")
  meta = max(steps, key=lambda p: int(p.name)) / "meta" / "metadata"
  try:
    data = json.loads(meta.read_text())["config"]["data"]["path"]
  except (OSError, ValueError, KeyError, TypeError):
    return "pre-training"   # unreadable metadata: the restore says what is wrong
  # A stage prepares its data inside its own workdir (WORKDIR/data, WORKDIR/data_reference).
  inside = data and workdir.resolve() in pathlib.Path(data).resolve().parents
  return "post-training" if inside else "pre-training"
