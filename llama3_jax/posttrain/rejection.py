"""Rejection sampling (report §4.2.2): K samples per prompt from the policy, the reward model's
best kept as new SFT data.

    settings = Settings(samples=10, temperature=0.7, top_p=0.9, seed=0, max_new_tokens=64)
    result = rejection_sample(policy, reward_model, tokenizer, prompts, settings)
    write_jsonl(result.kept, "rs.jsonl")        # SFT examples, each with its provenance

`prompts` are conversations ending with the user's turn. Each prompt is prefilled once and its K
samples start from copies of its KV cache (Generator's `samples`, Llama 3's prefix sharing);
each prompt and its K responses are then scored in one row (the prompt encoded once,
llama3_jax/posttrain/reward.py). A kept example is the highest-scored response (the first on a
tie) and carries its score, all K scores and responses, the sampling settings and the models'
paths. Empty responses are never kept (a prompt whose K responses are all empty keeps nothing).
The draws depend on the seed and the prompt's place only: a seed reproduces the kept set.
"""

import dataclasses
import json
import os
import pathlib
import time

import numpy as np

from llama3_jax.infer.chat import decode, encode_chat
from llama3_jax.infer.generate import Generator, Sampling
from llama3_jax.posttrain.reward import score_responses


@dataclasses.dataclass(frozen=True)
class Settings:
  samples: int = 8            # K
  temperature: float = 0.7
  top_p: float = 0.9
  seed: int = 0
  max_new_tokens: int = 16

  def __post_init__(self):
    if self.samples < 1 or self.max_new_tokens < 1:
      raise ValueError(f"rejection sampling needs samples >= 1 and max_new_tokens >= 1, not "
                       f"{self.samples} and {self.max_new_tokens}")
    Sampling(self.temperature, top_p=self.top_p)   # checks the ranges


@dataclasses.dataclass
class Result:
  responses: list[list[str]]       # per prompt: the K responses
  scores: list[np.ndarray]         # per prompt: their rewards [K] (-inf: empty)
  best: list[int | None]           # per prompt: the kept response's index (None: none kept)
  kept: list[dict]                 # SFT examples with provenance, in prompt order
  stats: dict                      # samples, seconds, samples per second


def prompt_sampling(settings: Settings, index: int) -> Sampling:
  """Prompt `index`'s draws: its own stream of the seed."""
  return Sampling(settings.temperature, top_p=settings.top_p,
                  seed=(settings.seed * 1_000_003 + index) % 2**32)


def rejection_sample(policy, reward_model, tokenizer, prompts: list[list[dict]],
                     settings: Settings, *, provenance: dict | None = None,
                     seq_len: int = 256) -> Result:
  stop = [tokenizer.special_id("<|eot_id|>"), tokenizer.eos_id]
  encoded = [encode_chat(tokenizer, m, add_generation_prompt=True)[0].tolist() for m in prompts]
  start = time.perf_counter()
  generated = Generator(policy, stop_ids=stop).generate(
      encoded, max_new_tokens=settings.max_new_tokens, samples=settings.samples,
      sampling=[prompt_sampling(settings, i) for i in range(len(prompts))])
  generation_s = time.perf_counter() - start
  responses = [[decode(tokenizer, tokens).strip() for tokens in r.tokens] for r in generated]
  # Empty responses are not scored (nothing to keep); a placeholder keeps the row's shape.
  scores = score_responses(reward_model, tokenizer, prompts,
                           [[text or "." for text in texts] for texts in responses],
                           seq_len=seq_len)
  scores = [np.where([bool(t) for t in texts], s, -np.inf).astype(np.float32)
            for texts, s in zip(responses, scores)]
  total_s = time.perf_counter() - start
  best, kept = [], []
  for messages, texts, s, r in zip(prompts, responses, scores, generated):
    j = int(np.argmax(s)) if np.isfinite(s).any() else None
    best.append(j)
    if j is None:
      continue
    kept.append({"messages": list(messages) + [{"role": "assistant", "content": texts[j]}],
                 "rejection_sampling": {
                     "score": float(s[j]), "scores": [float(x) for x in s], "kept": j,
                     "responses": texts, "finished": r.finished,
                     "settings": dataclasses.asdict(settings), **(provenance or {})}})
  n = len(prompts) * settings.samples
  stats = {"prompts": len(prompts), "samples": n, "kept": len(kept),
           "generation_s": round(generation_s, 3), "total_s": round(total_s, 3),
           "samples_per_s": round(n / total_s, 2)}
  return Result(responses, scores, best, kept, stats)


def write_jsonl(rows, path) -> None:
  """Writes beside `path` and renames into place: a crash never leaves half a file there."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  os.replace(tmp, path)
