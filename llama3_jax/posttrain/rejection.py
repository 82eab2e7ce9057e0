"""Rejection sampling (report §4.2.2): K samples per prompt from the policy, the reward model's
best kept as new SFT data.

    settings = Settings(samples=10, temperature=0.7, top_p=0.9, seed=0, max_new_tokens=64)
    result = rejection_sample(policy, reward_model, tokenizer, prompts, settings)
    write_jsonl(result.kept, "rs.jsonl")        # SFT examples, each with its provenance
    summary = sample_to_dir(out, policy_path, reward_path, [(messages, answer), ...], settings)

`prompts` are conversations ending with the user's turn. Each prompt is prefilled once and its K
samples start from copies of its KV cache (Generator's `samples`, Llama 3's prefix sharing);
each prompt and its K responses are then scored in one row (the prompt encoded once,
llama3_jax/posttrain/reward.py). A kept example is the highest-scored response (the first on a
tie) and carries its score, all K scores and responses, the sampling settings and the models'
paths. Empty responses are never kept (a prompt whose K responses are all empty keeps nothing).
The draws depend on the seed and the prompt's place only: a seed reproduces the kept set.

`reward_model=None` draws samples only (every score 0: the first non-empty one kept), for the
checker to annotate.

`sample_to_dir` does it for saved models into a directory: `sft.jsonl` (the kept examples),
`pairs.jsonl` and `summary.json` (throughput; with known answers, `ranking`: how the reward
model ranked each prompt's samples, within-prompt AUC and best of K against a random one of
the K and any, with intervals). Where the answers are known, a checker stands
in for the annotators: a prompt with both correct and wrong samples gives one preference pair
per distinct wrong answer among its samples, the correct answer over it. (One pair per prompt,
the best-scored correct sample over the best-scored wrong one, left the next round's reward
model below a random pick on the next policy's samples: BENCHMARKS.md, "Post-training rounds".)
"""

import dataclasses
import json
import os
import pathlib
import time

import numpy as np

from llama3_jax.errors import UserError
from llama3_jax.data.conversations.chat import decode, encode_chat
from llama3_jax.infer.generate import Generator, Sampling
from llama3_jax.infer.placement import Placement
from llama3_jax.posttrain.reward import score_responses
from llama3_jax.runtime import job
from llama3_jax.sharding import MeshConfig


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
  if reward_model is None:   # samples to annotate: all scores equal, the first kept
    scores = [np.zeros(len(texts), np.float32) for texts in responses]
  else:   # empty responses are not scored (nothing to keep); a placeholder keeps the row's shape
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
  """Writes beside `path` and renames into place: a crash never leaves half a file there. In a
  multi-process job every process calls it with the same rows: process 0 writes, and all return
  once the file is there."""
  path = pathlib.Path(path)

  def write():
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
  job.write_once(f"{path}", write)


def same_tokenizer(policy_path, reward_path):
  """The policy's tokenizer, which the reward model must share (it scores the policy's text)."""
  from llama3_jax.checkpoint.model import run_tokenizer
  from llama3_jax.data.conversations.prepared import sha256
  policy, reward = run_tokenizer(policy_path), run_tokenizer(reward_path)
  if sha256(policy.path) != sha256(reward.path):
    raise UserError(f"the reward model {reward_path} was trained with the tokenizer "
                    f"{reward.path}, the policy {policy_path} with {policy.path}",
                    "train the reward model on data prepared with the policy's tokenizer")
  return policy


def checker_pairs(prompts, responses, correct) -> list[dict]:
  """Preference pairs from checked samples: per prompt (messages), each distinct correct
  response over each distinct wrong non-empty one, in sample order. `correct[i][j]`: whether
  responses[i][j] is right."""
  pairs = []
  for messages, texts, right in zip(prompts, responses, correct, strict=True):
    good = list(dict.fromkeys(t for t, ok in zip(texts, right, strict=True) if ok))
    bad = list(dict.fromkeys(t for t, ok in zip(texts, right, strict=True) if not ok and t))
    pairs += [{"messages": messages, "chosen": g, "rejected": b} for g in good for b in bad]
  return pairs


def ranking(scores, correct) -> dict:
  """How well scores rank each prompt's K samples, against the checker. `scores[i]`: prompt
  i's K scores (-inf: an empty response), `correct[i]`: which of them are right.

  best_of_k: the share of prompts whose best-scored sample is right; random: a random one of
  the K (the mean share of right samples); any: some sample is right; each with its 95%
  interval over the prompts, and best - random paired by prompt with its own. auc: the
  within-prompt AUC, per prompt with right and wrong non-empty samples the share of (right,
  wrong) pairs scored in that order (ties half), averaged over those prompts (`auc_prompts`).
  """
  best, share, any_, aucs = [], [], [], []
  for s, ok in zip(scores, correct, strict=True):
    s, ok = np.asarray(s, np.float64), np.asarray(ok, bool)
    best.append(bool(np.isfinite(s).any() and ok[int(np.argmax(s))]))
    share.append(ok.mean())
    any_.append(ok.any())
    right, wrong = s[ok & np.isfinite(s)], s[~ok & np.isfinite(s)]
    if right.size and wrong.size:
      diff = right[:, None] - wrong[None, :]
      aucs.append(float(np.mean((diff > 0) + 0.5 * (diff == 0))))
  best, share, any_ = np.array(best, float), np.array(share), np.array(any_, float)
  mean_ci = lambda x: (float(x.mean()), float(1.96 * x.std(ddof=1) / np.sqrt(x.size))
                       if x.size > 1 else float("nan"))
  (b, b_ci), (r, r_ci), (a, a_ci) = mean_ci(best), mean_ci(share), mean_ci(any_)
  gain, gain_ci = mean_ci(best - share)
  auc, auc_ci = mean_ci(np.array(aucs)) if aucs else (float("nan"), float("nan"))
  return {"best_of_k_correct": b, "best_of_k_correct_ci": b_ci, "random_sample_correct": r,
          "random_sample_correct_ci": r_ci, "any_correct": a, "any_correct_ci": a_ci,
          "best_minus_random": gain, "best_minus_random_ci": gain_ci, "auc": auc,
          "auc_ci": auc_ci, "auc_prompts": len(aucs)}


def sample_to_dir(out, policy_path, reward_path, prompts, settings: Settings, *,
                  log=print) -> dict:
  """Rejection sampling of saved models (workdirs) into `out`; `prompts`: (messages, answer or
  None). `reward_path` None: samples for the checker to annotate only (pairs.jsonl; sft.jsonl
  keeps each prompt's first non-empty sample). Done once: a directory with its summary.json is
  read back, not sampled again. The models are read sharded over all devices of the job (FSDP)
  and every process of a multi-process job runs this alike; process 0 writes."""
  from llama3_jax.checkpoint.model import init_model_config, load_model, run_tokenizer
  out = pathlib.Path(out)
  done = out / "summary.json"
  if done.exists():
    return json.loads(done.read_text())
  placement = Placement.make(MeshConfig(), init_model_config(policy_path))
  reward_model = None
  if reward_path is None:
    tokenizer = run_tokenizer(policy_path)
  else:
    tokenizer = same_tokenizer(policy_path, reward_path)
    _, reward_model = load_model(reward_path, kind="reward", mesh=placement.mesh,
                                 rules=placement.rules)
  _, policy = load_model(policy_path, mesh=placement.mesh, rules=placement.rules)
  result = rejection_sample(policy, reward_model, tokenizer, [m for m, _ in prompts], settings,
                            provenance={"policy": str(policy_path),
                                        "reward_model": reward_path and str(reward_path)})
  summary = {**result.stats, "settings": dataclasses.asdict(settings)}
  pairs = []
  if all(answer is not None for _, answer in prompts):
    correct = [[text == answer.strip() for text in texts]
               for texts, (_, answer) in zip(result.responses, prompts)]
    pairs = checker_pairs([m for m, _ in prompts], result.responses, correct)
    report = ranking(result.scores, correct)
    if reward_model is None:   # no scores to rank by
      report = {k: v for k, v in report.items() if k.startswith(("random", "any"))}
    summary.update(report, pairs=len(pairs))
  write_jsonl(result.kept, out / "sft.jsonl")
  write_jsonl(pairs, out / "pairs.jsonl")
  # last: the mark of a finished directory
  job.write_once(f"{done}", lambda: done.write_text(json.dumps(summary, indent=1)))
  line = (f"{'samples to annotate' if reward_model is None else 'rejection sampling'}: "
          f"{summary['samples']} at {summary['samples_per_s']}/s -> {out}")
  if "best_of_k_correct" in summary:
    line += (f"; best of {settings.samples} correct {summary['best_of_k_correct']:.3f} vs a "
             f"random one {summary['random_sample_correct']:.3f} (best - random "
             f"{summary['best_minus_random']:+.3f} ± {summary['best_minus_random_ci']:.3f}, "
             f"within-prompt AUC {summary['auc']:.3f})")
  if "pairs" in summary:
    line += f"; {len(pairs)} checker pairs"
  if job.is_primary():
    log(line)
  return summary
