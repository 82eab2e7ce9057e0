"""Llama 3 pre-training: the project's main job.

python -m experiments.pretrain                                   # tiny default, 8 CPU devices
python -m experiments.pretrain --config experiments/configs/llama3_8b.py --workdir /ckpt/8b
python -m experiments.pretrain --config.train.steps=100 --config.mesh.tensor=4 --workdir /tmp/r
python -m launch.local --processes 2 --devices-per-process 4 -- \
    python -m experiments.pretrain --workdir /tmp/r2                             # 2 processes
python -m experiments.pretrain --config experiments/configs/llama3_405b.py --dry-run

Run again with the same --workdir and it resumes from the newest checkpoint (or says the run is
complete). SIGTERM / SIGINT save a checkpoint and exit 0. Writes WORKDIR/metrics.jsonl,
TensorBoard events in WORKDIR/tensorboard, WORKDIR/loss_lr.png, checkpoints, the goodput
timeline WORKDIR/goodput.jsonl and one log per process in WORKDIR/logs. Several processes (on
SLURM, Kubernetes or launch.local) join one job from the environment
(llama3_jax/runtime/distributed.py). Exit codes: 0 done or stopped, 1 a bug (a traceback),
2 bad input or refused (one line: llama3_jax/cli.py), 3 diverged (rollbacks did not help),
75 hung (the watchdog; the launcher restarts the job).

--dry-run checks the job on this machine without its devices and exits (nothing written):
the config validated for the mesh's device count (--dry-run-devices to choose it), the real
train step traced and lowered on an abstract mesh of that size, and the plan printed
(per-device memory, where weights are gathered, collectives, bubble, expected MFU on
--hardware); llama3_jax/train/dry_run.py says what it checks and what needs the GPU.
"""

import time

STARTED_AT = time.time()   # before the heavy imports: start-up counts against goodput

import pathlib  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "llama3_debug.py")
EXIT_DIVERGED = 3


def _define_flags():
  config_flags.DEFINE_config_file("config", _DEFAULT, "ml_collections config file")
  flags.DEFINE_string("workdir", "workdirs/pretrain", "checkpoints, metrics, plots")
  flags.DEFINE_bool("dry-run", False, "validate, trace and lower the step, print the plan; exit")
  flags.DEFINE_integer("dry-run-devices", 0, "devices of the dry run (0: the mesh's product)")
  flags.DEFINE_string("hardware", "h100", "the dry run's plan prices this GPU")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if flags.FLAGS["dry-run"].value:
    return _dry_run(cfg)
  import jax
  from experiments._defaults import start_jax
  start_jax(cfg)   # before JAX's backend starts; joins a multi-process job
  from llama3_jax import cli
  from llama3_jax.runtime.goodput import report
  from llama3_jax.train.config import run_config
  from llama3_jax.train.loop import train
  run = run_config(cfg)
  _check_workdir(workdir)
  summary = train(run, workdir, started_at=STARTED_AT)
  if summary.get("complete") or jax.process_index() != 0:
    return
  print(f"done: {summary['steps']} steps" + cli.stopped_note(summary, workdir)
        + (f", loss {summary['loss']:.4f}, {summary['tokens']:,} tokens, "
           f"{summary['tokens_per_s']:,.0f} tokens/s, MFU {summary['mfu']:.1%} "
           f"(peak: {summary['peak_source']})" if "loss" in summary else "")
        + f", {summary['wall_s']:.0f} s; outputs in {workdir}")
  if summary.get("goodput"):
    print(report(summary["goodput"]))


def _check_workdir(workdir) -> None:
  """A post-training stage's workdir is refused before anything is read (its checkpoints were
  blamed on data.streams, and following that fix ended in a KeyError)."""
  from experiments._defaults import RUN_NAMES, trained_in
  from llama3_jax.errors import UserError
  found = trained_in(workdir)
  if found not in (None, "pre-training"):
    raise UserError(f"--workdir {workdir} holds {RUN_NAMES[found]}, not pre-training",
                    "give pre-training a workdir of its own")


def _dry_run(cfg):
  from llama3_jax.errors import at_least
  at_least(flags.FLAGS["dry-run-devices"].value, 0, "--dry-run-devices",
           "give a device count, or 0 for the mesh's product")
  import jax
  # One CPU device is enough: the mesh is abstract. Set before JAX's backend starts.
  jax.config.update("jax_platforms", "cpu")
  from llama3_jax.train.dry_run import dry_run
  print(dry_run(cfg, flags.FLAGS["dry-run-devices"].value or None, flags.FLAGS.hardware))


if __name__ == "__main__":
  from llama3_jax import cli
  from llama3_jax.runtime.guard import Diverged
  cli.run_absl(main, define=_define_flags, exit_codes={Diverged: EXIT_DIVERGED})
