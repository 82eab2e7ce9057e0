"""Generate text with a trained model: a pre-training workdir or a Hugging Face directory.

python -m experiments.generate                                    # workdirs/pretrain (trains it
                                                                  # first if it is not there)
python -m experiments.generate --checkpoint workdirs/pretrain --prompt "The history of" \
    --temperature 0.8 --top-p 0.95 --seed 1 --samples 4 --max-new-tokens 64
python -m experiments.generate --hf /models/Llama-3.2-1B-Instruct --chat --prompt "Hi!"
python -m experiments.generate --prompts prompts.jsonl --out generations.jsonl   # {"prompt": ...}

Greedy unless a sampling option is given. One prompt streams its text to the terminal; a
--prompts file is decoded as batches (prompts of different lengths together, K samples of each
sharing one prefill of the prompt) and written as JSONL lines with "prompt", "sample",
"tokens" (the generated ids) and "text". --chat wraps each prompt as a user turn of the Llama 3
chat format and stops at <|eot_id|>. The model is sharded over all devices of the job as it is
read (FSDP; --mesh fsdp=4,tensor=2 for other axis sizes), with the tokens of one device. Under
launch.local, SLURM or Kubernetes every process runs this same command and process 0 prints
and writes:

python -m launch.local --processes 2 --devices-per-process 4 -- python -m experiments.generate \
    --checkpoint workdirs/pretrain --prompts prompts.jsonl --out generations.jsonl

Exit code 2: a bad flag, prompt, file or checkpoint, in one line (llama3_jax/cli.py).
"""

import json
import sys

from absl import app
from absl import flags

from experiments._defaults import MESH_HELP
from llama3_jax import cli
from llama3_jax.errors import (UserError, at_least, check_apart, check_file, check_new,
                               with_run, writable_file)

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a training workdir or checkpoint step "
                                  "directory (default: workdirs/pretrain)")
_HF = flags.DEFINE_string("hf", None, "a Hugging Face model directory instead of --checkpoint")
_AVERAGED = flags.DEFINE_bool("averaged", False, "use the anneal's averaged parameters")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "a tokenizer file (default: the run's)")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "a prompt (repeat for several)")
_PROMPTS = flags.DEFINE_string("prompts", None, "a JSONL file of {\"prompt\": str} lines")
_OUT = flags.DEFINE_string("out", None, "where --prompts' generations go (JSONL)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing --out")
_CHAT = flags.DEFINE_bool("chat", False, "wrap prompts in the Llama 3 chat format")
_SAMPLES = flags.DEFINE_integer("samples", 1, "samples per prompt")
_MAX_NEW = flags.DEFINE_integer("max-new-tokens", 48, "tokens to generate at most")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "sampling temperature (default: greedy)")
_TOP_K = flags.DEFINE_integer("top-k", None, "keep the k most likely tokens")
_TOP_P = flags.DEFINE_float("top-p", None, "keep the most likely tokens up to this mass")
_SEED = flags.DEFINE_integer("seed", 0, "the requests' seed")
_MESH = flags.DEFINE_string("mesh", "", MESH_HELP)
DEFAULT_PROMPTS = ["The history of", "def main():", "Solve 12 + 30 ="]


def read_prompts(path) -> list[str]:
  prompts = []
  for number, line in enumerate(check_file(path, "--prompts").read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      prompt = json.loads(line)["prompt"]
      if not isinstance(prompt, str):
        raise TypeError
    except (ValueError, KeyError, TypeError):
      raise UserError(f"{path}:{number} is not a JSON object with a \"prompt\" string: "
                      f"{line[:80]!r}", 'write one {"prompt": ...} object per line') from None
    prompts.append(prompt)
  if not prompts:
    raise UserError(f"{path} holds no prompts", 'write one {"prompt": ...} object per line')
  return prompts


def _check_out() -> None:
  """--out, before any work: never an input (its own --prompts first of all; in a run's workdir
  only a new file or earlier generations), an existing file only with --overwrite, and a place
  that can be written."""
  if not _OUT.value:
    return
  check_apart(_OUT.value, [("--prompts", _PROMPTS.value), ("--hf", _HF.value),
                           *with_run("--checkpoint", _CHECKPOINT.value),
                           ("--tokenizer", _TOKENIZER.value)],
              replaceable=_generations)
  check_new(_OUT.value, "--out", _OVERWRITE.value)
  writable_file(_OUT.value, "--out")


def _generations(path) -> bool:
  """Whether `path` is a JSONL file this launcher wrote (its first line has our fields)."""
  try:
    with open(path, encoding="utf-8") as file:
      return {"prompt", "sample", "tokens", "text"} <= json.loads(file.readline()).keys()
  except (OSError, ValueError, AttributeError):
    return False


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from experiments._defaults import inference_model, start_job
  start_job()   # 8 CPU devices unless the launcher says otherwise; joins a multi-process job
  from llama3_jax.data.conversations import chat
  from llama3_jax.infer.generate import Generator, Sampling
  from llama3_jax.runtime import job
  from llama3_jax.sharding import parse_mesh
  if _PROMPTS.value and _PROMPT.value:
    raise UserError("--prompt and --prompts are both given", "give one of them")
  _check_out()
  at_least(_SAMPLES.value, 1, "--samples")
  at_least(_MAX_NEW.value, 1, "--max-new-tokens")
  texts = read_prompts(_PROMPTS.value) if _PROMPTS.value else _PROMPT.value or DEFAULT_PROMPTS
  parse_mesh(_MESH.value)   # a bad --mesh is refused before anything is read
  # Sampling checks the ranges (top_p 0 is refused, not read as "no limit"), as for
  # rejection_sample; flags not given keep their "no limit" values.
  sampled = any(f is not None for f in (_TEMPERATURE.value, _TOP_K.value, _TOP_P.value))
  sampling = Sampling(temperature=(_TEMPERATURE.value if _TEMPERATURE.value is not None
                                   else 1.0) if sampled else 0.0,
                      top_k=0 if _TOP_K.value is None else _TOP_K.value,
                      top_p=1.0 if _TOP_P.value is None else _TOP_P.value, seed=_SEED.value)
  model, tokenizer = inference_model(_CHECKPOINT.value, _HF.value, _AVERAGED.value,
                                     _TOKENIZER.value, _MESH.value)
  if _CHAT.value:
    prompts = [chat.encode_chat(tokenizer, [{"role": "user", "content": t}],
                                add_generation_prompt=True)[0].tolist() for t in texts]
    stop = [tokenizer.special_id("<|eot_id|>"), tokenizer.special_id("<|end_of_text|>")]
  else:
    prompts = [tokenizer.encode(t, bos=True) for t in texts]
    stop = [tokenizer.special_id("<|end_of_text|>")]
  generator = Generator(model, stop_ids=stop)   # on the mesh the model was read onto
  stream = len(prompts) == 1 and _SAMPLES.value == 1 and not _OUT.value and job.is_primary()

  def continuation(prompt, tokens):
    """The generated text as it reads after the prompt (a word's leading space included)."""
    return chat.decode(tokenizer, prompt + tokens)[len(chat.decode(tokenizer, prompt)):]

  so_far, shown = [], [""]

  def on_tokens(row, ids):
    so_far.extend(ids)
    text = continuation(prompts[0], so_far)
    print(text[len(shown[0]):], end="", flush=True)
    shown[0] = text

  if stream:
    print(texts[0], end="", flush=True)
  results = generator.generate(prompts, max_new_tokens=_MAX_NEW.value, sampling=sampling,
                               samples=_SAMPLES.value, on_tokens=on_tokens if stream else None)
  rows = [{"prompt": text, "sample": j, "tokens": tokens,
           "text": continuation(prompt, tokens)}
          for text, prompt, result in zip(texts, prompts, results)
          for j, tokens in enumerate(result.tokens)]
  # Every process has every token; process 0 alone prints and writes them.
  job.write_once("generations", lambda: _report(rows, stream, generator))


def _report(rows: list[dict], stream: bool, generator) -> None:
  if stream:
    print()
  elif _OUT.value:
    with open(_OUT.value, "w") as out:
      out.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"wrote {len(rows)} generations to {_OUT.value}")
  else:
    for row in rows:
      print(f"--- {row['prompt']!r} (sample {row['sample']}):\n{row['prompt']}{row['text']}")
  counts = generator.compile_counts()
  print(f"({sum(len(r['tokens']) for r in rows)} tokens; compiled {counts['prefill']} prefill "
        f"and {counts['decode']} decode programs)", file=sys.stderr)


if __name__ == "__main__":
  cli.run_absl(main)
