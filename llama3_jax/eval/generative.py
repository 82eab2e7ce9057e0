"""Generative tasks: greedy answers, stop strings, answer extraction and exact match.

    name, examples, config = read_task("gsm8k_test.jsonl")   # or "arith_gen", a shipped task
    scores = score_generative(model, tokenizer, examples, config, shots=8)
    scores["exact_match"], scores["exact_match_ci"], scores["samples"][0]["generation"]

A task file is JSONL (or JSON / Parquet) of {"query": str, "answer": str} (the query is the
whole prompt, e.g. "What is 2 + 3?\\nAnswer:") or {"question": str, "answer": str} (prompted
"Question: ...\\nAnswer:"); a line with "answer" and no "choices" is generative. GSM8K's own
records are read as they are: their answer is a worked solution ending "#### N", the gold is N
and a shot shows the solution (calculator annotations <<...>> removed) ending "The final answer
is N", the form Llama 3's GSM8K prompts ask the model to end with (report §5.1, Table 8: 8-shot
chain of thought). A bad line is one error naming the file, the line and the fix.

Generation, as the report's pre-trained benchmarks: greedy. The prompt is `<|begin_of_text|>` +
k shots and the query joined by blank lines (drawn as multiple choice draws them), then at most
`max_new_tokens` tokens; a row stops at the end-of-text token or as soon as its decoded text
holds a stop string, and the text is cut at the first one. The answer is the first group of
`pattern` ("The final answer is (.+)") in the text, else (fallback "last_number") its last
number ("text": the whole text); answer and gold are normalised (whitespace, commas inside
numbers, a trailing period) and compared exactly. Interval: 1.96 sqrt(S (1 - S) / N) (§5.1.1).

Batch-invariant: prompts are grouped by length bucket; every call has ROWS rows, and one prompt
bucket and cache length per group; rows never leave the batch (they only stop being read), so a
generation does not depend on the batch size or on its neighbours (tested).
"""

import dataclasses
import json
import pathlib
import re


from llama3_jax.eval.multiple_choice import few_shot_context
from llama3_jax.eval.stats import exact_match
from llama3_jax.eval.tasks import TaskError, _fail, _records, arithmetic_questions
from llama3_jax.infer.generate import Generator, bucket

ROWS = 8   # rows per generation call, whatever the batch size asked for
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


@dataclasses.dataclass(frozen=True)
class GenerativeExample:
  query: str    # the prompt the generation continues (shots are prepended)
  answer: str   # the gold answer
  index: int    # the example's record (0-based) in its file
  shot: str     # this example as a few-shot demonstration


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  max_new_tokens: int = 256
  stop: tuple[str, ...] = ("\n\n", "Question:")
  pattern: str = r"The final answer is (.+)"
  fallback: str = "last_number"   # when `pattern` does not match: last_number, text or none

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens}; give at least 1")
    if self.fallback not in ("last_number", "text", "none"):
      raise ValueError(f"fallback {self.fallback!r}; use last_number, text or none")
    re.compile(self.pattern)


# ---- answers ----------------------------------------------------------------------------------

def normalise(text: str) -> str:
  """Whitespace stripped, commas inside numbers dropped ("1,234" -> "1234"), a trailing period
  dropped."""
  text = re.sub(r"(?<=\d),(?=\d)", "", text.strip())
  return text[:-1].rstrip() if text.endswith(".") else text


def extract(text: str, config: GenerationConfig = GenerationConfig()) -> str | None:
  """The answer in a generation (normalised), or None if there is none."""
  match = re.search(config.pattern, text) if config.pattern else None
  if match:
    return normalise(match.group(1) if match.groups() else match.group(0))
  if config.fallback == "last_number":
    numbers = NUMBER.findall(text)
    return normalise(numbers[-1]) if numbers else None
  return normalise(text) if config.fallback == "text" else None


def cut_at_stop(text: str, stop) -> str:
  """`text` up to the first occurrence of any stop string."""
  at = [i for i in (text.find(s) for s in stop if s) if i >= 0]
  return text[:min(at)] if at else text


# ---- task files -------------------------------------------------------------------------------

_FIX = 'write {"query": str, "answer": str} or {"question": str, "answer": str} (GSM8K)'


def _example(path, line, record, index) -> GenerativeExample:
  if "answer" not in record:
    _fail(path, line, "missing field 'answer'", _FIX)
  text = record.get("query", record.get("question"))
  if text is None:
    _fail(path, line, "missing field 'query' (or 'question')", _FIX)
  if not isinstance(text, str) or not text.strip():
    _fail(path, line, "the question is empty", "give each line its question's text")
  answer = record["answer"]
  if isinstance(answer, (int, float)) and not isinstance(answer, bool):
    answer = str(answer)
  if not isinstance(answer, str) or not answer.strip():
    _fail(path, line, "the answer is empty", "give each line its gold answer")
  solution = None
  if "####" in answer:   # GSM8K: the worked solution, then "#### N"
    solution, answer = (part.strip() for part in answer.rsplit("####", 1))
    solution = re.sub(r"<<[^>]*>>", "", solution)
    if not answer:
      _fail(path, line, "nothing after '####'", "end the solution with '#### <answer>'")
  query = record["query"] if "query" in record else f"Question: {text.strip()}\nAnswer:"
  shot = (f"{query} {solution} The final answer is {answer}" if solution is not None
          else f"{query} {answer.strip()}")
  return GenerativeExample(query, answer.strip(), index, shot)


def is_generative(path) -> bool:
  """Whether a task file's first record is generative ("answer", no "choices")."""
  path = pathlib.Path(path)
  if not path.is_file():
    return False
  first = next((record for _, record in _records(path)), None)
  return isinstance(first, dict) and "answer" in first and "choices" not in first


def read_file(path) -> list[GenerativeExample]:
  path = pathlib.Path(path)
  examples = []
  for index, (line, record) in enumerate(_records(path)):
    if not isinstance(record, dict):
      _fail(path, line, "not a JSON object", _FIX)
    examples.append(_example(path, line, record, index))
  if not examples:
    raise TaskError(f"{path} holds no examples")
  return examples


def arithmetic_generative_task(n: int = 400, seed: int = 2000) -> list[GenerativeExample]:
  """The arith task's questions (llama3_jax/eval/tasks.py) answered by generation: "What is
  512 + 89?\\nAnswer:" -> " 601" (a word problem's " 519 apples." gives its last number); one
  line, so "\\n" stops it."""
  return [GenerativeExample(query, str(value), index, f"{query} {value}")
          for index, (query, value) in enumerate(arithmetic_questions(n, seed))]


# name -> (examples, the generation settings that fit them)
SHIPPED = {"arith_gen": (arithmetic_generative_task,
                         GenerationConfig(max_new_tokens=8, stop=("\n",)))}


def read_task(name_or_path) -> tuple[str, list[GenerativeExample], GenerationConfig]:
  """(task name, examples, default settings): a shipped task by name, else a file."""
  if str(name_or_path) in SHIPPED:
    make, config = SHIPPED[str(name_or_path)]
    return str(name_or_path), make(), config
  return pathlib.Path(name_or_path).stem, read_file(name_or_path), GenerationConfig()


# ---- generation -------------------------------------------------------------------------------

def stop_ids(tokenizer) -> tuple[int, ...]:
  """End of text, and Llama 3's end of turn where the tokenizer has it."""
  eot = tokenizer.special_tokens.get("<|eot_id|>")
  return (tokenizer.eos_id,) + ((eot,) if eot is not None and eot != tokenizer.eos_id else ())


def prompt_ids(tokenizer, context: str, max_len: int, max_new_tokens: int) -> list[int]:
  """BOS + the context's ids; a context too long loses tokens on the left (BOS kept)."""
  ids = tokenizer.encode(context)
  keep = max_len - max_new_tokens - 1
  if keep < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                     f"model's context of {max_len} tokens; lower max_new_tokens")
  return [tokenizer.bos_id] + ids[-keep:]


def generate(model, tokenizer, prompts: list[list[int]], config: GenerationConfig,
             batch_size: int = ROWS, generator: Generator | None = None) -> list[str]:
  """Per prompt (token ids), the greedy generation's text cut at the first stop string."""
  if not 1 <= batch_size <= ROWS:
    raise ValueError(f"batch_size={batch_size}; use 1..{ROWS}")
  max_len, budget, specials = model.config.max_seq_len, config.max_new_tokens, stop_ids(tokenizer)
  # min_batch=ROWS: every call decodes ROWS rows, and the batch never shrinks as rows stop.
  generator = generator or Generator(model, stop_ids=specials, min_batch=ROWS)
  out = [None] * len(prompts)
  groups = {}
  for i, p in enumerate(prompts):
    groups.setdefault(bucket(len(p), 8), []).append(i)
  for length, members in sorted(groups.items()):
    for start in range(0, len(members), batch_size):
      chunk = members[start:start + batch_size]
      longest = max(len(prompts[i]) for i in chunk)
      # The generator sizes its cache by the longest prompt + the budget: asking for
      # `length - longest` more tokens gives every chunk of the group the same cache.
      asked = min(budget + length - longest, max_len - longest)
      new = [[] for _ in chunk]

      def on_tokens(row, ids, new=new):
        new[row] += ids
        text = tokenizer.decode([t for t in new[row] if t not in specials])
        return len(new[row]) >= budget or any(s in text for s in config.stop if s)

      generator.generate([prompts[i] for i in chunk], max_new_tokens=asked,
                         on_tokens=on_tokens)
      for row, i in enumerate(chunk):
        ids = [t for t in new[row][:budget] if t not in specials]
        out[i] = cut_at_stop(tokenizer.decode(ids), config.stop)
  return out


def score_generative(model, tokenizer, examples: list[GenerativeExample],
                     config: GenerationConfig = GenerationConfig(), *, shots: int = 0,
                     seed: int = 1234, batch_size: int = ROWS, task: str = "") -> dict:
  """exact_match, its interval and n, plus per-example samples (task, index, gold,
  generation, extracted)."""
  max_len = model.config.max_seq_len
  prompts = [prompt_ids(tokenizer, few_shot_context(e, examples, shots, seed), max_len,
                        config.max_new_tokens) for e in examples]
  texts = generate(model, tokenizer, prompts, config, batch_size)
  samples = []
  for e, text in zip(examples, texts):
    answer = extract(text, config)
    samples.append({"task": task, "index": e.index, "gold": e.answer, "generation": text,
                    "extracted": answer, "correct": answer == normalise(e.answer)})
  return {**exact_match([s["correct"] for s in samples]), "shots": shots, "max_new_tokens": config.max_new_tokens,
          "stop": list(config.stop), "samples": samples}


def config_from_flags(config: GenerationConfig, max_new_tokens=None, stop=None,
                      pattern=None) -> GenerationConfig:
  """The task's settings with the launcher's overrides (stop: a JSON list of strings)."""
  changes = {}
  if max_new_tokens:
    changes["max_new_tokens"] = max_new_tokens
  if stop:
    try:
      value = json.loads(stop)
    except json.JSONDecodeError:
      value = None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
      raise ValueError(f"--stop {stop!r} is not a JSON list of strings; write e.g. "
                       "'[\"\\n\\n\", \"Question:\"]'")
    changes["stop"] = tuple(value)
  if pattern:
    changes["pattern"] = pattern
  return dataclasses.replace(config, **changes)
