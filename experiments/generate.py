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
chat format and stops at <|eot_id|>. --mesh fsdp=4,tensor=2 decodes sharded like training.
Exit code 2: a bad flag, prompt, file or checkpoint, in one line (llama3_jax/cli.py).
"""

import json
import logging
import sys

from absl import app
from absl import flags

from llama3_jax import cli
from llama3_jax.errors import UserError, check_file

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a training workdir or checkpoint step "
                                  "directory (default: workdirs/pretrain)")
_HF = flags.DEFINE_string("hf", None, "a Hugging Face model directory instead of --checkpoint")
_AVERAGED = flags.DEFINE_bool("averaged", False, "use the anneal's averaged parameters")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "a tokenizer file (default: the run's)")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "a prompt (repeat for several)")
_PROMPTS = flags.DEFINE_string("prompts", None, "a JSONL file of {\"prompt\": str} lines")
_OUT = flags.DEFINE_string("out", None, "where --prompts' generations go (JSONL)")
_CHAT = flags.DEFINE_bool("chat", False, "wrap prompts in the Llama 3 chat format")
_SAMPLES = flags.DEFINE_integer("samples", 1, "samples per prompt")
_MAX_NEW = flags.DEFINE_integer("max-new-tokens", 48, "tokens to generate at most")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "sampling temperature (default: greedy)")
_TOP_K = flags.DEFINE_integer("top-k", None, "keep the k most likely tokens")
_TOP_P = flags.DEFINE_float("top-p", None, "keep the most likely tokens up to this mass")
_SEED = flags.DEFINE_integer("seed", 0, "the requests' seed")
_MESH = flags.DEFINE_string("mesh", "", "axis sizes to decode sharded, e.g. fsdp=4,tensor=2")
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


def load(args_checkpoint, hf_dir, averaged, tokenizer_path):
  """(model, tokenizer) from a workdir, a step directory or a Hugging Face directory."""
  from experiments._defaults import ensure_pretrained
  from llama3_jax.checkpoint.model import model_and_tokenizer
  checkpoint = args_checkpoint
  if not hf_dir and checkpoint is None:
    checkpoint = ensure_pretrained()
  return model_and_tokenizer(checkpoint, hf_dir, averaged, tokenizer_path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  jax.config.update("jax_num_cpu_devices", 8)   # ignored on GPU/TPU
  from llama3_jax.data.conversations import chat
  from llama3_jax.infer.generate import Generator, Sampling
  from llama3_jax.sharding import MeshConfig, parse_mesh
  if _PROMPTS.value and _PROMPT.value:
    raise UserError("--prompt and --prompts are both given", "give one of them")
  texts = read_prompts(_PROMPTS.value) if _PROMPTS.value else _PROMPT.value or DEFAULT_PROMPTS
  mesh = MeshConfig(**{"fsdp": 1, **parse_mesh(_MESH.value)}) if _MESH.value else None
  logging.getLogger("absl").setLevel(logging.WARNING)   # Orbax's progress lines
  model, tokenizer = load(_CHECKPOINT.value, _HF.value, _AVERAGED.value, _TOKENIZER.value)
  if tokenizer.vocab_size > model.config.vocab_size:
    raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                    f"vocabulary of {model.config.vocab_size}", "pass the run's --tokenizer")
  if _CHAT.value:
    prompts = [chat.encode_chat(tokenizer, [{"role": "user", "content": t}],
                                add_generation_prompt=True)[0].tolist() for t in texts]
    stop = [tokenizer.special_id("<|eot_id|>"), tokenizer.special_id("<|end_of_text|>")]
  else:
    prompts = [tokenizer.encode(t, bos=True) for t in texts]
    stop = [tokenizer.special_id("<|end_of_text|>")]
  sampled = any(f is not None for f in (_TEMPERATURE.value, _TOP_K.value, _TOP_P.value))
  sampling = Sampling(temperature=(_TEMPERATURE.value if _TEMPERATURE.value is not None
                                   else 1.0) if sampled else 0.0,
                      top_k=_TOP_K.value or 0, top_p=_TOP_P.value or 1.0, seed=_SEED.value)
  generator = Generator(model, mesh, stop_ids=stop)
  stream = len(prompts) == 1 and _SAMPLES.value == 1 and not _OUT.value

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
