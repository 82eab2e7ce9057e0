"""Needle in a haystack: a random fact at several depths of corpus text, asked for at the end.

    grid = needle_grid(model, tokenizer, lengths=(256, 1024), depths=(0, 0.5, 1.0), trials=4)
    plot(grid, "needle.png")                      # accuracy by context length and depth

The report gated each long-context stage on this (§3.4.2): "The magic number of <name> is
<number>." is placed at `depth` (0 = the start, 1 = just before the question) of haystack text
(the embedded corpus' general documents) filling `length` tokens, followed by the question
"What is the magic number of <name>? The magic number of <name> is"; greedy decoding must give
the number. Trials draw new names, numbers and haystack offsets from the seed.
"""

import json
import random
import re

import numpy as np

from llama3_jax.infer.generate import Generator, Sampling

_NAMES = ("Zorblat", "Quillon", "Mervish", "Talbrek", "Ossundy", "Pernath", "Vexmoor", "Ilvane")


def haystack_tokens(tokenizer, count: int = 200_000) -> list[int]:
  """Token ids of the embedded corpus' general text, in document order."""
  from llama3_jax.data import corpus
  raw = corpus.embedded_corpus() / "raw" / "general.jsonl"
  ids = []
  for line in open(raw, encoding="utf-8"):
    ids += tokenizer.encode(json.loads(line)["text"] + "\n\n")
    if len(ids) >= count:
      break
  return ids


def needle_prompt(tokenizer, haystack: list[int], length: int, depth: float,
                  rng: random.Random) -> tuple[list[int], str]:
  """(prompt ids of about `length` tokens, the answer)."""
  name, number = rng.choice(_NAMES), str(rng.randint(1000, 9999))
  needle = tokenizer.encode(f" The magic number of {name} is {number}. ")
  question = tokenizer.encode(f"\n\nWhat is the magic number of {name}? The magic number of "
                              f"{name} is")
  room = length - len(needle) - len(question) - 1
  if room < 1:
    raise ValueError(f"length {length} leaves no room for haystack text; use a longer length")
  start = rng.randrange(0, max(1, len(haystack) - room))
  text = haystack[start:start + room]
  at = int(round(depth * len(text)))
  return [tokenizer.bos_id] + text[:at] + needle + text[at:] + question, number


def needle_grid(model, tokenizer, *, lengths, depths, trials: int = 4, seed: int = 0,
                max_new_tokens: int = 6) -> dict:
  """Accuracy [len(lengths), len(depths)] of greedy answers."""
  haystack = haystack_tokens(tokenizer, 4 * max(lengths))
  generator = Generator(model, stop_ids=[tokenizer.eos_id])
  accuracy = np.zeros((len(lengths), len(depths)))
  for i, length in enumerate(lengths):
    if length + max_new_tokens > model.config.max_seq_len:
      raise ValueError(f"needle length {length} exceeds the model's context of "
                       f"{model.config.max_seq_len} tokens")
    for j, depth in enumerate(depths):
      rng = random.Random(seed * 1_000_003 + i * 1000 + j)
      prompts, answers = zip(*(needle_prompt(tokenizer, haystack, length, depth, rng)
                               for _ in range(trials)))
      results = generator.generate(list(prompts), max_new_tokens=max_new_tokens,
                                   sampling=Sampling())
      found = [re.match(r"\s*(\d+)", tokenizer.decode(r.tokens[0])) for r in results]
      accuracy[i, j] = np.mean([bool(m) and m.group(1) == a for m, a in zip(found, answers)])
  return {"lengths": list(lengths), "depths": list(depths), "trials": trials,
          "accuracy": accuracy.tolist(), "acc": float(accuracy.mean())}


def plot(grid: dict, path) -> None:
  """The heat map of accuracy by length (rows) and depth (columns)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(grid["depths"]),
                                  1.0 + 0.5 * len(grid["lengths"])))
  image = ax.imshow(np.array(grid["accuracy"]), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
  ax.set_xticks(range(len(grid["depths"])), [f"{d:.0%}" for d in grid["depths"]])
  ax.set_yticks(range(len(grid["lengths"])), [str(n) for n in grid["lengths"]])
  ax.set_xlabel("needle depth")
  ax.set_ylabel("context tokens")
  ax.set_title(f"needle in a haystack ({grid['trials']} trials per cell)")
  fig.colorbar(image, ax=ax, label="accuracy")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
