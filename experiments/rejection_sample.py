"""Rejection sampling (report §4.2.2): K samples per prompt from a policy, the reward model's
best kept as SFT data with its provenance.

python -m experiments.rejection_sample                     # the embedded default, a few minutes
python -m experiments.rejection_sample --policy workdirs/sft --reward_model workdirs/reward_model \
    --prompts prompts.jsonl --samples 16 --temperature 0.7 --top_p 0.9 --seed 1 --out /tmp/rs

`--prompts` is JSONL of {"messages": [... ending with the user's turn]}, with an optional
"answer" (then the kept answers are checked: best of K against a random one of the K, and
checked pairs are written). With no arguments: the default SFT run (workdirs/sft) samples the
shipped task's training questions, scored by the default reward model (workdirs/reward_model);
both are trained first if absent. Writes OUT/sft.jsonl (SFT examples: the prompt and the kept
answer, with its score, the K scores and answers, the sampling settings and the models),
OUT/pairs.jsonl and OUT/summary.json (samples per second). The models are read sharded over
all devices of the job (FSDP); under launch.local, SLURM or Kubernetes every process runs this
same command and process 0 writes. Exit codes: 0 done, 2 bad input.
"""

import json
import pathlib

from llama3_jax import cli
from llama3_jax.errors import UserError, check_apart

_DEFAULT_POLICY, _DEFAULT_REWARD = "workdirs/sft", "workdirs/reward_model"


def read_prompts(path) -> list[tuple[list[dict], str | None]]:
  """(messages, answer or None) per line; a bad line is an error naming it."""
  from llama3_jax.data.conversations import check_messages
  prompts = []
  for line_no, line in enumerate(open(path, encoding="utf-8"), start=1):
    if not line.strip():
      continue
    try:
      example = json.loads(line)
    except json.JSONDecodeError as error:
      raise UserError(f"{path}:{line_no}: not JSON ({error.msg})",
                      "write one JSON object per line") from None
    if not isinstance(example, dict) or "messages" not in example:
      raise UserError(f"{path}:{line_no}: no 'messages' field",
                      'write {"messages": [{"role": "user", "content": "..."}]}')
    try:
      check_messages(example["messages"], path=path, line=line_no, kind="preference")
    except ValueError as error:
      raise UserError(str(error).split("; ")[0], str(error).split("; ", 1)[-1]) from None
    answer = example.get("answer")
    prompts.append((example["messages"], None if answer is None else str(answer)))
  if not prompts:
    raise UserError(f"{path} holds no prompts", "give a JSONL file of {\"messages\": [...]}")
  return prompts


def _defaults(args):
  """The default models, trained first if absent, and the shipped task's questions."""
  from experiments import _finetune
  from experiments._defaults import missing_run
  from llama3_jax.posttrain import task
  from llama3_jax.posttrain.stage import run_stage
  from llama3_jax.runtime import job
  if args.policy == _DEFAULT_POLICY:
    _finetune._ensure_start(_DEFAULT_POLICY)
  if args.reward_model == _DEFAULT_REWARD and missing_run(_DEFAULT_REWARD):
    from experiments._defaults import ensure_pretrained
    from experiments.configs import reward_model
    job.say(f"no reward model in {_DEFAULT_REWARD}: training the default one first "
            "(python -m experiments.reward_model)")
    cfg = reward_model.get_config()
    ensure_pretrained(cfg.init.path)
    from llama3_jax.train.config import run_config
    _finetune.report(run_stage(run_config(cfg), _DEFAULT_REWARD, "reward"), _DEFAULT_REWARD)
  if args.prompts:
    return read_prompts(args.prompts)
  files = task.write_task(pathlib.Path(args.out) / "task")
  examples = task.read_heldout(files["sft"])[:args.count]
  return [(e["messages"][:-1], e["messages"][-1]["content"]) for e in examples]


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--policy", default=_DEFAULT_POLICY, help="the policy's training workdir")
  parser.add_argument("--reward_model", default=_DEFAULT_REWARD,
                      help="the reward model's training workdir")
  parser.add_argument("--prompts", help="JSONL of {messages[, answer]}; default: the task's")
  parser.add_argument("--count", type=int, default=200, help="prompts of the shipped task")
  parser.add_argument("--samples", type=int, default=8, help="K")
  parser.add_argument("--temperature", type=float, default=0.8)
  parser.add_argument("--top_p", type=float, default=0.95)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max_new_tokens", type=int, default=16)
  parser.add_argument("--out", default="workdirs/rejection_sample")
  args = parser.parse_args(argv)
  check_apart(args.out, [("--policy", args.policy), ("--reward_model", args.reward_model),
                         ("--prompts", args.prompts)])
  from experiments._defaults import start_jax
  from experiments.configs import sft
  start_jax(sft.get_config())   # 8 CPU devices, as the default runs; joins a multi-process job
  from llama3_jax.posttrain.rejection import Settings, sample_to_dir
  from llama3_jax.runtime import job
  settings = Settings(args.samples, args.temperature, args.top_p, args.seed, args.max_new_tokens)
  for name in ("policy", "reward_model"):
    path = pathlib.Path(getattr(args, name))
    if getattr(args, name) not in (_DEFAULT_POLICY, _DEFAULT_REWARD) and not (
        path / "checkpoints").is_dir():
      raise UserError(f"--{name} {path} is not a training workdir (no checkpoints/)",
                      f"give the workdir of a {'reward model' if 'reward' in name else 'policy'}"
                      " run")
  out = pathlib.Path(args.out)
  if (out / "summary.json").exists():
    raise UserError(f"--out {out} already holds a finished rejection sampling",
                    "choose a new --out directory")
  prompts = _defaults(args)
  sample_to_dir(out, args.policy, args.reward_model, prompts, settings)
  job.say(f"outputs in {out} (sft.jsonl, pairs.jsonl, summary.json)")


if __name__ == "__main__":
  cli.run(main)
