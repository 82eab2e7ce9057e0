"""Llama 3's iterative post-training (report §4.1-4.2): rounds of reward model -> rejection
sampling -> SFT -> DPO, each starting from the best model of the round before.

    rounds = run_rounds(cfg, "workdirs/posttrain")     # python -m experiments.posttrain

On the shipped verifiable task (llama3_jax/posttrain/task.py), where a program stands in for
the annotators:
- round 0 (`W/round_0/sft`, unless `cfg.start_policy` names a policy): SFT of the pre-trained
  model on the task's written answers, the first policy to sample from;
- round i, in `W/round_<i>/`:
  `annotation/` (`cfg.rejection.annotate` > 0) K samples of the policy for other training
                questions, annotated by the checker into pairs for this round's reward model
                (Llama 3 annotates the current models' samples before each round's RM);
  `reward/`     a reward model from the pre-trained model (`cfg.reward_init="pretrained"`, as
                Llama 3's) or from the policy (`"policy"`), on the task's pairs plus the
                annotated ones (`cfg.reward_data="annotated"`) or on all pairs so far (`"all"`:
                also the checker's pairs of earlier rounds' rejection samples). A round whose
                reward data and start equal the round before's uses that round's model (the
                same bits: training is deterministic) instead of training it again;
  `rejection/`  K samples per training prompt from the policy, the reward model's best kept as
                SFT data (`sft.jsonl`, with provenance); the samples are also annotated by the
                checker into new pairs (`pairs.jsonl`: the correct answer over each distinct
                wrong answer sampled, where a prompt has both), and the summary says how the
                reward model ranked them (rejection.ranking: within-prompt AUC, best of K vs a
                random one vs any, with intervals);
  `sft/`        SFT of the policy (`cfg.sft_init="previous"`) or of the pre-trained model
                (`"pretrained"`, Llama 3's choice) on the task's answers plus the kept samples;
  `dpo/`        DPO of that SFT model on all preference pairs so far: the round's policy.
Each round ends with `W/round_<i>/summary.json`; `W/summary.json` lists them all. Every stage
resumes after a crash (training from its checkpoints; sampling is redone, seeded, and its files
appear whole, by rename), and a finished stage or round is not redone. In a multi-process job
every process runs the rounds alike, each stage's models sharded over the job's devices and
handed on as sharded checkpoints; process 0 writes the files and the log.
"""

import dataclasses
import json
import pathlib
import random
import time

from llama3_jax.errors import UserError
from llama3_jax.posttrain import task
from llama3_jax.posttrain.rejection import Settings, sample_to_dir, write_jsonl
from llama3_jax.posttrain.stage import run_stage
from llama3_jax.runtime import job
from llama3_jax.schema import from_dict
from llama3_jax.train.config import RunConfig, run_config

SUMMARY = "summary.json"
# the ranking report of the round's rejection sampling (rejection.ranking), in its summary
RANKING = ("best_of_k", "random_sample", "any_correct", "best_minus_random", "auc")
ANNOTATION_SEED = 7919   # the samples to annotate draw from the seed plus this


class RoundsStopped(Exception):
  """A stage was stopped (SIGTERM / Ctrl-C: a preemption) and saved its checkpoint; the rounds
  stop with it, and the same command resumes them (the launcher exits 0)."""


def _stage(base: RunConfig, workdir, kind, init_path, data_path, heldout, log):
  run = base.with_paths(init=init_path, data=data_path)
  start = time.perf_counter()
  summary = run_stage(run, workdir, kind, heldout=heldout)
  if summary.get("stopped_by"):
    raise RoundsStopped(f"{workdir}: stopped by {summary['stopped_by']} (checkpoint saved); "
                        "run again to resume")
  log(f"  {kind:<6} {workdir} ({time.perf_counter() - start:.0f} s)")
  return summary["evaluation"].get("after", {})


def _concat(sources, out) -> pathlib.Path:
  """The lines of `sources`, in order, as one file (the data a stage trains on)."""
  lines = []
  for source in sources:
    lines += [line for line in pathlib.Path(source).read_text().splitlines() if line.strip()]
  write_jsonl([json.loads(line) for line in lines], out)
  return pathlib.Path(out)


def _prompts(files, counts: tuple[int, ...], seed: int):
  """Disjoint sets of training questions (messages and answer), `counts[j]` in set j, seeded
  per round."""
  examples = task.read_heldout(files["sft"])
  rng = random.Random(seed)
  chosen = rng.sample(range(len(examples)), min(sum(counts), len(examples)))
  sets = []
  for count in counts:
    sets.append([(examples[i]["messages"][:-1], examples[i]["messages"][-1]["content"])
                 for i in chosen[:count]])
    chosen = chosen[count:]
  return sets


def sample_round(cfg, out: pathlib.Path, policy_path, reward_path, files, round_index: int,
                 log) -> dict:
  """Sampling of one round into `out` (sft.jsonl, pairs.jsonl, summary.json): reward_path
  None, the questions to annotate (seed + ANNOTATION_SEED); else rejection sampling."""
  r = cfg.rejection
  seed = r.seed + round_index
  rejection, annotation = _prompts(files, (r.prompts, r.annotate), seed)
  if reward_path is None:
    seed += ANNOTATION_SEED
  settings = Settings(samples=r.samples, temperature=r.temperature, top_p=r.top_p, seed=seed,
                      max_new_tokens=r.max_new_tokens)
  return sample_to_dir(out, policy_path, reward_path,
                       annotation if reward_path is None else rejection, settings, log=log)


@dataclasses.dataclass(frozen=True)
class TaskSettings:
  """The shipped task's files (llama3_jax/posttrain/task.py)."""
  seed: int = 0
  heldout: int = 200


@dataclasses.dataclass(frozen=True)
class RejectionSettings:
  """Each round's rejection sampling; `annotate`: questions whose samples the checker annotates
  for the round's reward model (0: none)."""
  prompts: int = 1200
  samples: int = 2
  temperature: float = 1.2
  top_p: float = 1.0
  seed: int = 0
  max_new_tokens: int = 8
  annotate: int = 0

  def __post_init__(self):
    try:
      Settings(samples=self.samples, temperature=self.temperature, top_p=self.top_p,
               seed=self.seed, max_new_tokens=self.max_new_tokens)
    except ValueError as error:
      raise UserError(f"rejection: {error}", "fix --config.rejection.*") from None
    if self.prompts < 1:
      raise UserError(f"rejection.prompts={self.prompts}", "sample at least one prompt")
    if self.annotate < 0:
      raise UserError(f"rejection.annotate={self.annotate}",
                      "annotate 0 or more questions' samples")


STAGES = ("sft_start", "reward", "sft", "dpo")


@dataclasses.dataclass(frozen=True)
class RoundsConfig:
  """The rounds, typed (experiments/configs/posttrain.py builds the ConfigDict; `rounds_config`
  converts it once). Each stage is a whole training run's config."""
  sft_start: RunConfig            # round 0's SFT
  reward: RunConfig               # each round's reward model
  sft: RunConfig                  # each round's SFT
  dpo: RunConfig                  # each round's DPO
  rounds: int = 2
  init_path: str = "workdirs/pretrain"   # the pre-trained model
  start_policy: str = ""          # a policy to sample from in round 1; "": round 0 trains one
  sft_init: str = "previous"      # or "pretrained"
  reward_init: str = "pretrained"   # or "policy": the RM starts from the round's policy
  reward_data: str = "annotated"    # the task's and annotated pairs; "all": + rejection's pairs
  task: TaskSettings = TaskSettings()
  rejection: RejectionSettings = RejectionSettings()

  def __post_init__(self):
    if self.rounds < 1:
      raise UserError(f"rounds={self.rounds}", "run at least one round (--config.rounds=2)")
    if self.sft_init not in ("previous", "pretrained"):
      raise UserError(f"sft_init={self.sft_init!r}", 'use "previous" or "pretrained"')
    if self.reward_init not in ("policy", "pretrained"):
      raise UserError(f"reward_init={self.reward_init!r}", 'use "policy" or "pretrained"')
    if self.reward_data not in ("annotated", "all"):
      raise UserError(f"reward_data={self.reward_data!r}", 'use "annotated" or "all"')


def rounds_config(cfg) -> RoundsConfig:
  """The typed rounds of a ConfigDict (or dict): every field and every stage's config checked,
  before anything runs; a UserError names the field and the fix."""
  values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  stages = {}
  for name in STAGES:
    try:
      stages[name] = run_config(values.pop(name))
    except KeyError:
      raise UserError(f"the rounds' config has no {name} stage",
                      f"set {name} (experiments/configs/posttrain.py)") from None
    except ValueError as error:
      raise UserError(f"the {name} stage's config: {error}", f"fix --config.{name}.*") from None
  try:
    return from_dict(RoundsConfig, {**values, **stages})
  except (TypeError, ValueError) as error:
    if isinstance(error, UserError):
      raise
    raise UserError(f"the rounds' config: {error}", "fix --config.*") from None


def run_rounds(cfg: RoundsConfig, workdir, log=print) -> list[dict]:
  log = log if job.is_primary() else (lambda *args, **kwargs: None)
  for name, path in (("init_path", cfg.init_path), ("start_policy", cfg.start_policy)):
    if path and not (pathlib.Path(path) / "checkpoints").is_dir():
      raise UserError(f"{name} {path} is not a training workdir (no checkpoints/)",
                      f"set --config.{name} to a run's workdir")
  workdir = pathlib.Path(workdir)
  files = task.write_task(workdir / "task", seed=cfg.task.seed, heldout=cfg.task.heldout)
  heldout = files["heldout"]
  policy = cfg.start_policy
  if not policy:
    policy = workdir / "round_0" / "sft"
    if not (policy / "hf" / "config.json").exists():   # not finished yet
      log("round 0: SFT of the pre-trained model on the task's answers")
    _stage(cfg.sft_start, policy, "sft", cfg.init_path, files["sft"], heldout, log)
  rounds, pairs, reward_pairs = [], [files["preferences"]], [files["preferences"]]
  for i in range(1, cfg.rounds + 1):
    out = workdir / f"round_{i}"
    done = (out / SUMMARY).exists()
    if not done:
      log(f"round {i}:")
    start = time.perf_counter()
    annotated = {}
    if cfg.rejection.annotate:   # the policy's own mistakes, annotated for this round's RM
      annotated = {} if done else sample_round(cfg, out / "annotation", policy, None, files, i,
                                                log)
      pairs.append(out / "annotation" / "pairs.jsonl")
      reward_pairs.append(out / "annotation" / "pairs.jsonl")
    if done:
      rounds.append(json.loads((out / SUMMARY).read_text()))
    else:
      rm_init = policy if cfg.reward_init == "policy" else cfg.init_path
      rm_data = _concat(pairs if cfg.reward_data == "all" else reward_pairs,
                        out / "reward_data.jsonl")
      rm_path, previous = out / "reward", workdir / f"round_{i - 1}"
      if (rounds and cfg.reward_init == "pretrained"
          and (previous / "reward_data.jsonl").read_bytes() == rm_data.read_bytes()):
        # the same start and data as the round before: the same model (training is
        # deterministic), so it is not trained again
        rm_path = workdir / rounds[-1].get("reward_model", f"round_{i - 1}/reward")
        rm = json.loads((rm_path / "eval.json").read_text())["after"]
        log(f"  reward {rm_path} (round {i - 1}'s: the same data and start)")
      else:
        rm = _stage(cfg.reward, rm_path, "reward", rm_init, rm_data, heldout, log)
      sampled = sample_round(cfg, out / "rejection", policy, rm_path, files, i, log)
      sft_init = policy if cfg.sft_init == "previous" else cfg.init_path
      sft = _stage(cfg.sft, out / "sft", "sft", sft_init,
                   _concat([files["sft"], out / "rejection" / "sft.jsonl"], out / "sft_data.jsonl"),
                   heldout, log)
      dpo = _stage(cfg.dpo, out / "dpo", "dpo", out / "sft",
                   _concat(pairs + [out / "rejection" / "pairs.jsonl"], out / "dpo_data.jsonl"),
                   heldout, log)
      rounds.append({
          "round": i, "reward_model": str(rm_path.relative_to(workdir)),
          "rm_accuracy": rm["rm_accuracy"], "rm_accuracy_ci": rm["rm_accuracy_ci"],
          "reward_margin": rm["reward_margin"],
          **{k: v for k, v in sampled.items() if k.startswith(RANKING)},
          "samples_per_s": sampled["samples_per_s"], "kept": sampled["kept"],
          "new_pairs": sampled["pairs"] + annotated.get("pairs", 0),
          "annotated_pairs": annotated.get("pairs", 0),
          "sft_exact_match": sft["exact_match"], "exact_match": dpo["exact_match"],
          "exact_match_ci": dpo["exact_match_ci"],
          "preference_accuracy": dpo["preference_accuracy"], "n": dpo["n"],
          "seconds": round(time.perf_counter() - start, 1)})
      summary = rounds[-1]
      job.write_once(f"{out / SUMMARY}",
                     lambda: (out / SUMMARY).write_text(json.dumps(summary, indent=1)))
    pairs.append(out / "rejection" / "pairs.jsonl")
    policy = out / "dpo"
  job.write_once(f"{workdir / SUMMARY}",
                 lambda: (workdir / SUMMARY).write_text(json.dumps(rounds, indent=1)))
  return rounds


def table(rounds: list[dict]) -> str:
  """The rounds as a text table."""
  head = (f"{'round':>5} {'rm acc':>13} {'AUC':>5} {'best-of-K':>9} {'random':>7} "
          f"{'best - random':>15} {'SFT EM':>7} {'EM (DPO)':>14} {'samples/s':>9}")
  lines = [head]
  for r in rounds:
    lines.append(f"{r['round']:>5} {r['rm_accuracy']:>6.3f} ± {r['rm_accuracy_ci']:.3f} "
                 f"{r['auc']:>5.3f} {r['best_of_k_correct']:>9.3f} "
                 f"{r['random_sample_correct']:>7.3f} {r['best_minus_random']:>+7.3f} ± "
                 f"{r['best_minus_random_ci']:.3f} {r['sft_exact_match']:>7.3f} "
                 f"{r['exact_match']:>7.3f} ± {r['exact_match_ci']:.3f} "
                 f"{r['samples_per_s']:>9.1f}")
  return "\n".join(lines)
