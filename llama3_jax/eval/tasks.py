"""Multiple-choice tasks: the example format, readers for benchmark files, the shipped tasks.

    examples = read_task("arc_challenge_test.jsonl")    # or .json / .parquet; format detected
    examples = read_task("arith")                        # a task the project ships (or cloze)
    examples[0].query, examples[0].choices, examples[0].gold

A local task file is JSONL of {"query": str, "choices": [str, ...], "gold": int}. The readers
take the benchmark files as users have them (no hub at run time) and give each the prompt Llama
3's evaluations (and lm-evaluation-harness) use:
  ARC        {"question", "choices": {"text", "label"}, "answerKey"}   "Question: ...\nAnswer:"
  MMLU       {"question", "choices", "answer", "subject"}   the subject's header, the question,
             "A. ..." to "D. ...", "Answer:"; choices " A" ... " D"; macro-averaged by subject
  HellaSwag  {"ctx", "endings", "label"}                               the context, endings
A bad line is one error naming the file, the line and the fix.
"""

import json
import pathlib
import random

from llama3_jax.eval.example import Example


class TaskError(ValueError):
  pass


def _fail(path, line: int, problem: str, fix: str):
  raise TaskError(f"{path}:{line}: {problem}; {fix}")


def _records(path: pathlib.Path):
  """(1-based line or row, record) of a JSON, JSONL or Parquet file."""
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq
    for i, record in enumerate(pq.read_table(path).to_pylist(), start=1):
      yield i, record
    return
  text = path.read_text(encoding="utf-8")
  if path.suffix == ".json" and text.lstrip().startswith("["):
    for i, record in enumerate(json.loads(text), start=1):
      yield i, record
    return
  for i, line in enumerate(text.splitlines(), start=1):
    if line.strip():
      try:
        yield i, json.loads(line)
      except json.JSONDecodeError as error:
        _fail(path, i, f"not JSON ({error.msg})", "write one JSON object per line")


def _plain(path, line, record, index) -> Example:
  for name in ("query", "choices", "gold"):
    if name not in record:
      _fail(path, line, f"missing field {name!r}", 'write {"query": str, "choices": [str, '
            '...], "gold": int}')
  choices = record["choices"]
  if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
    _fail(path, line, "'choices' must be a non-empty list of strings", "give two or more choices")
  gold = record["gold"]
  if not isinstance(gold, int) or not 0 <= gold < len(choices):
    _fail(path, line, f"gold={gold!r} is not an index into the {len(choices)} choices",
          f"use 0..{len(choices) - 1}")
  return Example(record["query"], tuple(choices), gold, index,
                 shot=f"{record['query']} {choices[gold]}")


def _arc(path, line, record, index) -> Example:
  labels, texts = list(record["choices"]["label"]), list(record["choices"]["text"])
  if record["answerKey"] not in labels:
    _fail(path, line, f"answerKey {record['answerKey']!r} is not among labels {labels}",
          "fix the answer key")
  gold = labels.index(record["answerKey"])
  query = f"Question: {record['question']}\nAnswer:"
  return Example(query, tuple(texts), gold, index, shot=f"{query} {texts[gold]}")


def _mmlu(path, line, record, index) -> Example:
  choices, answer = list(record["choices"]), record["answer"]
  letters = "ABCD"[:len(choices)]
  gold = letters.index(answer) if isinstance(answer, str) else int(answer)
  if not 0 <= gold < len(choices):
    _fail(path, line, f"answer {answer!r} is out of range", "use 0-3 or A-D")
  subject = record.get("subject", "")
  body = record["question"].strip() + "".join(
      f"\n{letter}. {choice}" for letter, choice in zip(letters, choices)) + "\nAnswer:"
  header = (f"The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n")
  return Example(header + body, tuple(letters), gold, index, subject,
                 shot=f"{body} {letters[gold]}")


def _hellaswag(path, line, record, index) -> Example:
  endings = list(record["endings"])
  gold = int(record["label"])
  if not 0 <= gold < len(endings):
    _fail(path, line, f"label {gold} is out of range", f"use 0..{len(endings) - 1}")
  return Example(record["ctx"], tuple(endings), gold, index,
                 shot=f"{record['ctx']} {endings[gold]}")


# format -> (fields that identify it, reader)
FORMATS = {"plain": ({"query", "choices", "gold"}, _plain),
           "arc": ({"question", "choices", "answerKey"}, _arc),
           "mmlu": ({"question", "choices", "answer"}, _mmlu),
           "hellaswag": ({"ctx", "endings", "label"}, _hellaswag)}


def read_file(path, format: str | None = None) -> list[Example]:
  """The examples of a task file; `format` (plain, arc, mmlu, hellaswag) or detected from the
  first record's fields."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"task file {path} does not exist; give a JSONL, JSON or Parquet "
                            "file, or a shipped task (arith, cloze, arith_gen)")
  examples = []
  for index, (line, record) in enumerate(_records(path)):
    if not isinstance(record, dict):
      _fail(path, line, "not a JSON object", 'write {"query": ..., "choices": ..., "gold": ...}')
    if format is None:
      format = next((name for name, (keys, _) in FORMATS.items() if keys <= record.keys()),
                    "plain" if "query" in record else None)   # plain: name what is missing
      if format is None:
        _fail(path, line, f"fields {sorted(record)} match no known format",
              'write {"query": str, "choices": [str, ...], "gold": int} (or ARC, MMLU, '
              "HellaSwag records)")
    try:
      examples.append(FORMATS[format][1](path, line, record, index))
    except (KeyError, TypeError) as error:
      _fail(path, line, f"not a {format} record ({error!r})", "check the file's fields")
    if len(examples[-1].choices) < 2:   # one choice is always "right": a 1.000 that means nothing
      _fail(path, line, f"{len(examples[-1].choices)} choice", "give two or more choices")
  if not examples:
    raise TaskError(f"{path} holds no examples")
  return examples


# ---- tasks the project ships ------------------------------------------------------------------

def arithmetic_questions(n: int = 400, seed: int = 2000) -> list[tuple[str, int]]:
  """(query, answer): problems of the math source in its six forms and its own words, each
  cut where the source writes the answer ("What is 512 + 89?\\nAnswer:", "Compute 12 *
  31.\\n12 * 31 =", a word problem up to its worked "Ada has 512 + 7 ="), seeded apart from
  the corpus (which uses seeds 0 and 1000)."""
  from llama3_jax.data.corpus import math_problem
  rng = random.Random(seed)
  return [math_problem(rng)[:2] for _ in range(n)]


def arithmetic_task(n: int = 400, seed: int = 2000, choices: int = 4) -> list[Example]:
  """The arithmetic questions with the true answer among the answers to `choices - 1` other
  questions of the task (as the cloze task hides a document's continuation among other
  documents').

  Why these distractors: a distractor is drawn as a gold is (the answer to a random question),
  so a scorer that ignores the question (one that prefers short numbers, or the digit 1)
  scores chance in expectation, and any use of the question beats it, from the operation and
  the operands' size (a quotient under 100 against a product in the thousands) to the exact
  result. The task's first version took near misses of the answer (off by 1, by 10, two digits
  swapped): only exact arithmetic told them apart, and a question-blind model with a digit
  preference fell below chance (0.155 +/- 0.035). Its second asked sums and differences only:
  the default model, then trained 60 steps, scored chance on it, and so did a 400-step model
  (acc_norm 0.273 +/- 0.044): neither computes three-digit sums. On all six forms the 400-step
  model scores acc_norm 0.422 +/- 0.048 (docs/evaluation.md): it knows what size of number
  each operation gives. acc (unnormalised) stays near chance: a longer number costs more
  log-likelihood whatever the question, which acc_norm's per-character normalisation removes."""
  questions = arithmetic_questions(n, seed)
  rng = random.Random(seed + 1)
  examples = []
  for index, (query, value) in enumerate(questions):
    others = set()
    while len(others) < choices - 1:
      other = questions[rng.randrange(n)][1]
      if other != value:
        others.add(other)
    options = [str(value)] + [str(v) for v in sorted(others)]
    rng.shuffle(options)
    examples.append(Example(query, tuple(options), options.index(str(value)), index,
                            shot=f"{query} {value}"))
  return examples


def cloze_task() -> list[Example]:
  from llama3_jax.eval.cloze import cloze_task as build   # reads the held-out split
  return build()


SHIPPED = {"arith": arithmetic_task, "cloze": cloze_task}


def read_task(name_or_path) -> tuple[str, list[Example]]:
  """(task name, examples): a shipped task by name, else a file (named by its stem)."""
  if str(name_or_path) in SHIPPED:
    return str(name_or_path), SHIPPED[str(name_or_path)]()
  path = pathlib.Path(name_or_path)
  return path.stem, read_file(path)
