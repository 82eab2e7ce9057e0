"""Export a training run's model as a Hugging Face directory: weights, config and tokenizer.

python -m experiments.export_hf                                       # workdirs/pretrain -> .../hf
python -m experiments.export_hf --checkpoint workdirs/pretrain --out /tmp/hf [--averaged]

The directory loads with `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` and nothing else (the tokenizer is the one the run's data
was prepared with, or --tokenizer). Exit code 2: a missing or mismatched checkpoint or
tokenizer, or an --out that exists (pass --overwrite), in one line (llama3_jax/cli.py).
"""

import logging
import pathlib

from absl import app
from absl import flags

from llama3_jax import cli
from llama3_jax.errors import UserError

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
  from llama3_jax import hf
  from llama3_jax.checkpoint.model import load_model, run_tokenizer
  from llama3_jax.data.tokenizers import load_tokenizer
  out = pathlib.Path(_OUT.value or pathlib.Path(_CHECKPOINT.value) / "hf")
  if out.exists() and any(out.iterdir()) and not _OVERWRITE.value:   # before reading anything
    raise UserError(f"--out {out} exists and is not empty",
                    "pass --overwrite to replace it, or choose another --out")
  logging.getLogger("absl").setLevel(logging.WARNING)   # Orbax's progress lines
  config, model = load_model(_CHECKPOINT.value, averaged=_AVERAGED.value)
  tokenizer = (load_tokenizer(_TOKENIZER.value) if _TOKENIZER.value
               else run_tokenizer(_CHECKPOINT.value))
  if tokenizer.vocab_size > config.vocab_size:
    raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                    f"vocabulary of {config.vocab_size}", "pass the run's --tokenizer")
  hf.save(model, config, out, dtype=_DTYPE.value, overwrite=_OVERWRITE.value,
          tokenizer=tokenizer)
  print(f"exported {_CHECKPOINT.value} ({'averaged' if _AVERAGED.value else 'newest'} "
        f"parameters) to {out}: load it with transformers.AutoModelForCausalLM / AutoTokenizer")


if __name__ == "__main__":
  cli.run_absl(main)
