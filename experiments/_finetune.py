"""What `experiments.sft`, `dpo` and `reward_model` share: flags, the default runs, the report.

Not a launcher: `python -m experiments.sft` / `dpo` / `reward_model` use it.
"""

import json
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from llama3_jax import cli

_CONFIGS = pathlib.Path(__file__).parent / "configs"
# The runs the defaults start from, made first when absent.
_DEFAULT_STARTS = {"workdirs/pretrain": "pretrain", "workdirs/sft": "sft"}


def define_flags(name: str):
  """The launcher's flag definitions (run by llama3_jax/cli.py, which reports bad ones)."""
  def define():
    config_flags.DEFINE_config_file("config", str(_CONFIGS / f"{name}.py"),
                                    "ml_collections config file")
    flags.DEFINE_string("workdir", f"workdirs/{name}", "checkpoints, metrics, eval.json, hf/")
    flags.DEFINE_bool("dry-run", False, "validate, trace and lower the step, print the plan; exit")
    flags.DEFINE_integer("dry-run-devices", 0, "devices of the dry run (0: the mesh's product)")
    flags.DEFINE_string("hardware", "h100", "the dry run's plan prices this GPU")
  return define


def dry_run(cfg, kind: str) -> None:
  """pretrain --dry-run for this stage's step (its objective: DPO with its frozen reference):
  nothing is read from init.path but, with model.size="init", its model's config."""
  from llama3_jax.errors import at_least
  at_least(flags.FLAGS["dry-run-devices"].value, 0, "--dry-run-devices",
           "give a device count, or 0 for the mesh's product")
  import jax
  jax.config.update("jax_platforms", "cpu")   # the mesh is abstract: one CPU device will do
  from llama3_jax.posttrain.stage import objective_of
  from llama3_jax.train.config import run_config
  from llama3_jax.train.dry_run import dry_run as dry_run_of
  print(dry_run_of(cfg, flags.FLAGS["dry-run-devices"].value or None, flags.FLAGS.hardware,
                   objective=objective_of(run_config(cfg), kind)))


def _ensure_start(path: str) -> None:
  """The default starting run, trained first if it is not there."""
  from experiments._defaults import missing_run
  if path not in _DEFAULT_STARTS or not missing_run(path):
    return
  from llama3_jax.runtime import job
  start = _DEFAULT_STARTS[path]
  job.say(f"no run in {path}: running the default {start} first (python -m experiments.{start})")
  if start == "pretrain":
    from experiments._defaults import ensure_pretrained
    ensure_pretrained(path)
  else:
    from experiments.configs import sft
    _ensure_start(sft.get_config().init.path)
    from llama3_jax.posttrain.stage import run_stage
    from llama3_jax.train.config import run_config
    report(run_stage(run_config(sft.get_config()), path, "sft"), path)


def report(summary: dict, workdir) -> None:
  """The stage's evaluation and where its outputs went (process 0 prints it)."""
  from llama3_jax.runtime import job
  if not job.is_primary():
    return
  evaluation = summary.get("evaluation") or {}
  for name, scores in evaluation.items():
    if "rm_accuracy" in scores:
      print(f"{name:>7}: held-out pairwise accuracy {scores['rm_accuracy']:.3f} ± "
            f"{scores['rm_accuracy_ci']:.3f}, mean margin {scores['reward_margin']:.3f} "
            f"(n={scores['n']})")
      continue
    print(f"{name:>7}: exact match {scores['exact_match']:.3f} ± {scores['exact_match_ci']:.3f}"
          f", preference accuracy {scores['preference_accuracy']:.3f} ± "
          f"{scores['preference_accuracy_ci']:.3f} (n={scores['n']}; answers e.g. "
          f"{scores['answers'][:3]})")
  status = "run complete" if summary.get("complete") else "done"
  # eval.json only where there were held-out examples (the shipped task's, not a user's file)
  written = [n for n in ("metrics.jsonl", "eval.json", "hf/")
             if (pathlib.Path(workdir) / n.rstrip("/")).exists()]
  print(f"{status}: {summary.get('steps')} steps" + cli.stopped_note(summary, workdir)
        + (f", loss {summary['loss']:.4f}" if "loss" in summary else "")
        + f"; outputs in {workdir} ({', '.join(written)})")


def main_for(kind: str):
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if flags.FLAGS["dry-run"].value:
      return dry_run(cfg, kind)
    from experiments._defaults import start_jax
    start_jax(cfg)   # before JAX's backend starts; joins a multi-process job
    from llama3_jax.posttrain.stage import run_stage
    from llama3_jax.train.config import run_config
    run = run_config(cfg)   # the one conversion: every field checked before any work
    _ensure_start(run.init.path)
    if kind != "reward" and run.init.path and pathlib.Path(run.init.path).exists():
      from llama3_jax.checkpoint.model import check_model_kind
      check_model_kind(run.init.path, "lm")   # a reward model is not a policy to fine-tune
    _claim_workdir(workdir, kind)
    report(run_stage(run, workdir, kind), workdir)
  return main


def _claim_workdir(workdir, kind: str) -> None:
  """The stage's workdir holds nothing, or this kind of stage's run (it resumes), which
  WORKDIR/stage.json records; another run's checkpoints are refused before anything is read."""
  from experiments._defaults import RUN_NAMES, STAGE_FILE, trained_in
  from llama3_jax.errors import UserError
  from llama3_jax.runtime import job
  found = trained_in(workdir)
  if found not in (None, kind, "post-training"):
    raise UserError(f"--workdir {workdir} holds {RUN_NAMES[found]}, not {RUN_NAMES[kind]}",
                    f"give the {kind} stage a workdir of its own (it starts from init.path)")

  def claim():
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(workdir) / STAGE_FILE).write_text(json.dumps({"kind": kind}) + "\n")
  job.write_once("stage kind", claim)


def launch(kind: str, name: str | None = None) -> None:
  """`name`: the launcher's, its config's and its default workdir's (default: `kind`)."""
  cli.run_absl(main_for(kind), define=define_flags(name or kind))
