"""Robustness of multiple-choice answers (report §5.1.2, Figures 13-14), from one task.

    report = robustness(model, tokenizer, examples)    # {variant: acc, ...} and the spread

Each question is shown with lettered options and answered by its label (" A"), as in MMLU:
  labels        "A. B. C. D.", "A) B) C) D)", "1. 2. 3. 4.", "$ & # @", "œ § з ü"
  order         the options rotated by 0, 1, 2, ... places (the gold moves with them)
  label bias    4 shots whose answers are AAAA, ABCD, AABB or CCDD (their options reordered)
  prompt        three question formats
Every variant is scored like any task (llama3_jax/eval/multiple_choice.py); the report gives
each variant's accuracy and, per family, the spread (max - min) and the standard deviation.
"""

import dataclasses
import random

import numpy as np

from llama3_jax.eval import multiple_choice
from llama3_jax.eval.tasks import Example

LABEL_SETS = {"A.": ("ABCD", "."), "A)": ("ABCD", ")"), "1.": ("1234", "."),
              "$&#@": ("$&#@", "."), "œ§зü": ("œ§зü", ".")}
BIAS_PATTERNS = ("AAAA", "ABCD", "AABB", "CCDD")
FORMATS = {"plain": "{q}\n{options}\nAnswer:",
           "question": "Question: {q}\n{options}\nAnswer:",
           "instruction": "Choose the correct answer.\n{q}\n{options}\nThe answer is"}


def _question(example: Example) -> str:
  q = example.query
  return q[:-len("Answer:")].rstrip() if q.endswith("Answer:") else q


def lettered(example: Example, order, labels: str = "ABCD", sep: str = ".",
             template: str = FORMATS["plain"]) -> Example:
  """The example with its options in `order`, shown as "<label><sep> <text>", answered by
  the label."""
  texts = [example.choices[i] for i in order]
  options = "\n".join(f"{labels[j]}{sep} {t}" for j, t in enumerate(texts))
  query = template.format(q=_question(example), options=options)
  gold = list(order).index(example.gold)
  return dataclasses.replace(example, query=query, choices=tuple(labels[:len(texts)]),
                             gold=gold, shot=f"{query} {labels[gold]}")


def _usable(examples: list[Example]) -> list[Example]:
  return [e for e in examples if len(e.choices) == 4]


def _rotation(n: int, k: int) -> list[int]:
  return [(i + k) % n for i in range(n)]


def _with_gold_at(example: Example, position: int) -> list[int]:
  """An option order that puts the gold answer at `position`."""
  others = [i for i in range(len(example.choices)) if i != example.gold]
  return others[:position] + [example.gold] + others[position:]


def biased_context(example: Example, pool: list[Example], pattern: str, seed: int) -> str:
  """Four shots whose answers follow `pattern` (e.g. AABB), then the question (labels A-D)."""
  rng = random.Random(seed * 1_000_003 + example.index)
  others = rng.sample([e for e in pool if e.index != example.index], len(pattern))
  shots = [lettered(e, _with_gold_at(e, "ABCD".index(letter))).shot
           for e, letter in zip(others, pattern)]
  return "\n\n".join(shots + [lettered(example, range(4)).query])


def variants(examples: list[Example]) -> dict[str, list[Example]]:
  """family/variant -> the examples of that variant (zero-shot ones)."""
  examples = _usable(examples)
  if not examples:
    raise ValueError("robustness needs examples with 4 choices")
  out = {}
  for name, (labels, sep) in LABEL_SETS.items():
    out[f"labels/{name}"] = [lettered(e, range(4), labels, sep) for e in examples]
  for k in range(4):
    out[f"order/rotate{k}"] = [lettered(e, _rotation(4, k)) for e in examples]
  for name, template in FORMATS.items():
    out[f"prompt/{name}"] = [lettered(e, range(4), template=template) for e in examples]
  return out


def robustness(model, tokenizer, examples: list[Example], *, seed: int = 1234,
               batch_size: int = multiple_choice.ROWS) -> dict:
  """Accuracy per variant and the spread per family (labels, order, bias, prompt)."""
  scores = {}
  for name, variant in variants(examples).items():
    lls = multiple_choice.loglikelihoods(model, tokenizer, variant, batch_size=batch_size)
    scores[name] = multiple_choice.metrics(variant, lls)["acc"]
  usable = _usable(examples)
  for pattern in BIAS_PATTERNS:
    plain = [lettered(e, range(4)) for e in usable]
    biased = [dataclasses.replace(p, query=biased_context(e, usable, pattern, seed))
              for e, p in zip(usable, plain)]
    lls = multiple_choice.loglikelihoods(model, tokenizer, biased, batch_size=batch_size)
    scores[f"bias/{pattern}"] = multiple_choice.metrics(biased, lls)["acc"]
  families = {}
  for name, value in scores.items():
    families.setdefault(name.split("/")[0], []).append(value)
  spread = {family: {"min": min(v), "max": max(v), "spread": max(v) - min(v),
                     "std": float(np.std(v))} for family, v in families.items()}
  return {"variants": scores, "families": spread, "n": len(usable)}
