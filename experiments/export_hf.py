"""Export a training run's model as a Hugging Face directory: weights, config and tokenizer.

python -m experiments.export_hf                                       # workdirs/pretrain -> .../hf
python -m experiments.export_hf --checkpoint workdirs/pretrain --out /tmp/hf [--averaged]

The directory loads with `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` and nothing else (the tokenizer is the one the run's data
was prepared with, or --tokenizer). The model is read sharded over all devices of the job and
written one tensor at a time (llama3_jax/checkpoint/hf/weights.py): under launch.local, SLURM
or Kubernetes every process runs this same command and process 0 writes. Exit code 2: a
missing or mismatched checkpoint or tokenizer, or an --out that exists (pass --overwrite), in
one line (llama3_jax/cli.py).
"""

import pathlib

from absl import app
from absl import flags

from llama3_jax import cli
from llama3_jax.errors import UserError, check_apart, check_new, with_run

_CHECKPOINT = flags.DEFINE_string("checkpoint", "workdirs/pretrain",
                                  "a training workdir or checkpoint step directory")
_OUT = flags.DEFINE_string("out", None, "the Hugging Face directory (default: CHECKPOINT/hf)")
_AVERAGED = flags.DEFINE_bool("averaged", False, "export the anneal's averaged parameters")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "a tokenizer file (default: the run's)")
_DTYPE = flags.DEFINE_string("dtype", None, "float32 or bfloat16 (default: the parameters')")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing --out")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from experiments._defaults import model_config_at, start_job
  start_job()   # joins a multi-process job
  from llama3_jax import hf
  from llama3_jax.checkpoint.model import load_model, run_tokenizer
  from llama3_jax.data.tokenizers import load_tokenizer
  from llama3_jax.infer.placement import Placement
  from llama3_jax.runtime import job
  from llama3_jax.sharding import MeshConfig
  out = pathlib.Path(_OUT.value or pathlib.Path(_CHECKPOINT.value) / "hf")
  # Before reading anything: --out never replaces the run it exports (an earlier export inside
  # it, e.g. the default RUN/hf, may be replaced), nor anything else without --overwrite.
  check_apart(out, [*with_run("--checkpoint", _CHECKPOINT.value),
                    ("--tokenizer", _TOKENIZER.value)],
              replaceable=lambda path: (path / "config.json").is_file())
  check_new(out, "--out", _OVERWRITE.value)
  job.barrier("checked --out")   # every process looked before process 0 writes there
  model_config = model_config_at(_CHECKPOINT.value)
  try:   # FSDP over every device; a model whose d_model does not split: whole on each
    placement = Placement.make(MeshConfig(), model_config)
  except ValueError:
    placement = Placement.make(MeshConfig(data=-1, fsdp=1), model_config)
  config, model = load_model(_CHECKPOINT.value, averaged=_AVERAGED.value, mesh=placement.mesh)
  tokenizer = (load_tokenizer(_TOKENIZER.value) if _TOKENIZER.value
               else run_tokenizer(_CHECKPOINT.value))
  if tokenizer.vocab_size > config.vocab_size:
    raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                    f"vocabulary of {config.vocab_size}", "pass the run's --tokenizer")
  hf.save(model, config, out, dtype=_DTYPE.value, overwrite=_OVERWRITE.value,
          tokenizer=tokenizer)
  job.say(f"exported {_CHECKPOINT.value} ({'averaged' if _AVERAGED.value else 'newest'} "
          f"parameters) to {out}: load it with transformers.AutoModelForCausalLM / AutoTokenizer")


if __name__ == "__main__":
  cli.run_absl(main)
