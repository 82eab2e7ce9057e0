"""The shipped verifiable task: arithmetic questions a program checks, for SFT, DPO and rounds.

    files = write_task(out_dir, seed=0)     # sft.jsonl, preferences.jsonl, heldout.jsonl
    report = evaluate(model, tokenizer, read_heldout(files["heldout"]))  # exact match, intervals

Questions ask for a sum or a difference of small numbers ("What is 17 + 5?"); the answer is the
number alone. Train and held-out questions are disjoint (split by a hash of the question).
Preference pairs have the correct answer as chosen and a near miss as rejected (off by one or
ten, or its digits swapped): the mistakes a small model makes. `evaluate` generates greedy
answers to held-out questions (exact match) and scores held-out pairs (the share where the
model gives the correct answer the higher log-probability), each with the 95% interval of the
report's §5.1.1.
"""

import hashlib
import json
import pathlib
import random

from flax import nnx
import numpy as np

from llama3_jax.data import conversations
from llama3_jax.data.conversations.chat import decode, encode_chat
from llama3_jax.data.conversations.prepared import decode_record, encode_record, example_rows
from llama3_jax.eval import stats
from llama3_jax.infer.generate import Generator, Sampling
from llama3_jax.infer.placement import Placement
from llama3_jax.objectives.dpo import response_sums
from llama3_jax.runtime import job

SYSTEM = "Answer with the number only."
_TEMPLATES = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?")


def _question(rng: random.Random, max_operand: int) -> tuple[str, str]:
  a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
  op = rng.choice("+-")
  if op == "-" and b > a:
    a, b = b, a
  value = a + b if op == "+" else a - b
  return rng.choice(_TEMPLATES).format(a=a, op=op, b=b), str(value)


def _held_out(question: str, share: float) -> bool:
  digest = hashlib.sha256(question.encode()).digest()
  return int.from_bytes(digest[:4], "little") / 2**32 < share


def near_miss(answer: str, rng: random.Random) -> str:
  """A wrong answer close to the right one."""
  value = int(answer)
  options = {value + 1, value - 1, value + 10, max(value - 10, 0), int(answer[::-1])}
  options.discard(value)
  options = sorted(o for o in options if o >= 0)
  return str(rng.choice(options))


def messages(question: str) -> list[dict]:
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def write_task(out_dir, *, seed: int = 0, train_questions: int = 4000, heldout: int = 200,
               max_operand: int = 20, heldout_share: float = 0.15) -> dict:
  """Writes the task's files into `out_dir`; returns {name: path}. In a multi-process job every
  process calls it: process 0 writes, and all return once the files are there."""
  out_dir = pathlib.Path(out_dir)
  paths = {name: out_dir / f"{name}.jsonl" for name in ("sft", "preferences", "heldout")}
  job.write_once(f"task {out_dir}", lambda: _write_task(
      paths, seed, train_questions, heldout, max_operand, heldout_share))
  return paths


def _write_task(paths: dict, seed: int, train_questions: int, heldout: int, max_operand: int,
                heldout_share: float) -> None:
  paths["sft"].parent.mkdir(parents=True, exist_ok=True)
  rng = random.Random(seed)
  train, test, seen = [], [], set()
  for _ in range(100 * (train_questions + heldout)):
    if len(train) >= train_questions and len(test) >= heldout:
      break
    question, answer = _question(rng, max_operand)
    if question in seen:
      continue
    seen.add(question)
    (test if _held_out(question, heldout_share) else train).append((question, answer))
  train, test = train[:train_questions], test[:heldout]
  with open(paths["sft"], "w") as f:
    for question, answer in train:
      f.write(json.dumps({"messages": messages(question) + [
          {"role": "assistant", "content": answer}]}) + "\n")
  with open(paths["preferences"], "w") as f:
    for question, answer in train:
      f.write(json.dumps({"messages": messages(question), "chosen": answer,
                          "rejected": near_miss(answer, rng)}) + "\n")
  with open(paths["heldout"], "w") as f:
    for question, answer in test:
      f.write(json.dumps({"messages": messages(question), "answer": answer,
                          "chosen": answer, "rejected": near_miss(answer, rng)}) + "\n")


def read_heldout(path) -> list[dict]:
  return [json.loads(line) for line in open(path) if line.strip()]


def exact_match(model, tokenizer, examples: list[dict], max_new_tokens: int = 8) -> dict:
  """Greedy answers to the examples' questions against their answers."""
  prompts = [encode_chat(tokenizer, e["messages"], add_generation_prompt=True)[0].tolist()
             for e in examples]
  stop = [tokenizer.special_id("<|eot_id|>"), tokenizer.eos_id]
  results = Generator(model, stop_ids=stop).generate(prompts, max_new_tokens=max_new_tokens,
                                                      sampling=Sampling())
  answers = [decode(tokenizer, r.tokens[0]).strip() for r in results]
  return {**stats.exact_match(a == e["answer"] for a, e in zip(answers, examples)),
          "answers": answers[:5],
          "stopped": float(np.mean([r.finished[0] for r in results]))}


def preference_accuracy(model, tokenizer, examples: list[dict], seq_len: int = 128,
                        batch_size: int = 32) -> dict:
  """The share of pairs whose chosen answer the model gives the higher log-probability."""
  records = [decode_record(encode_record(conversations.preference_pieces(
      tokenizer, e["messages"], {"chosen": e["chosen"], "rejected": e["rejected"]})))
      for e in examples]
  score = nnx.jit(lambda model, batch: response_sums(model, batch, slots=4))
  placement = Placement.of(model)   # on a mesh: rows over its data-like axes
  wins = []
  for start in range(0, len(records), batch_size):
    chunk = records[start:start + batch_size]
    rows = placement.padded_rows(len(chunk))
    batch = example_rows(chunk + [chunk[-1]] * (rows - len(chunk)), seq_len)
    with placement.active():
      logp, _ = placement.fetch(score(model, {k: placement.rows(v) for k, v in batch.items()}))
    wins += (logp[:len(chunk), 1] > logp[:len(chunk), 2]).tolist()
  value = float(np.mean(wins))
  return {"preference_accuracy": value,
          "preference_accuracy_ci": stats.interval(value, len(wins))}


def evaluate(model, tokenizer, examples: list[dict]) -> dict:
  return {**exact_match(model, tokenizer, examples),
          **preference_accuracy(model, tokenizer, examples)}
