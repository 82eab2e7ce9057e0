"""`curate`: the staged curation pipeline (stages.py) run by an executor (executors.py).

  stats = curate("raw/", "clean/")                                   # local process pool
  stats = curate("raw/", "clean/", executor="ray", tasks=64)         # a Ray cluster
  curate("raw/", "clean/", executor="slurm", tasks=512)              # writes sbatch files

Writes the kept documents to the same relative paths under `out_dir` (".gz" dropped),
`out_dir/stats.json`, and the stages' files under `out_dir/_work` (completion markers, the
arrays stages pass on, a stats JSON per stage in `_work/stats/`). A relaunch into the same
`out_dir` runs only the units without a completion marker. If an input file changed since the
last launch (size or modification time), its scan and every later stage are redone; a changed
config or a different set of files starts over: a run never mixes two versions of its input.
"""

import dataclasses
import json
import os
import pathlib
import shutil

from llama3_jax.data.curation import passes
from llama3_jax.data.curation.config import CurationConfig
from llama3_jax.data.curation.executors import run_pipeline
from llama3_jax.data.curation.reader import CurationInputError, list_inputs
from llama3_jax.data.curation.stages import REMOVAL_STAGES as STAGES
from llama3_jax.data.curation.tasks import SPEC, fingerprint, write_spec

WORK = "_work"
BUILDER = "llama3_jax.data.curation.stages:build_stages"

__all__ = ["STAGES", "curate"]


def curate(input_dir: str, out_dir: str, cfg: CurationConfig = CurationConfig(), *,
           executor: str = "local", tasks: int = 0, relaunch: str = "", log=None) -> dict:
  """Curates every *.jsonl(.gz) under `input_dir` into `out_dir`; returns the stats.

  `tasks`: tasks per stage (0: `cfg.workers`, itself 0 = all CPUs); the local executor runs
  them on `cfg.workers` processes. `relaunch`: the command a failed task names. Returns {} for
  the slurm executor, which only writes the job files (`log` says where).
  """
  files = list_inputs(input_dir)
  outputs = output_paths(files, pathlib.Path(input_dir), pathlib.Path(out_dir))
  check_resources(cfg)
  work = (pathlib.Path(out_dir) / WORK).resolve()   # tasks may run in another directory
  args = {"inputs": [[str(p.resolve()), str(o.resolve()), *fingerprint(p)]
                     for p, o in zip(files, outputs)],
          "config": dataclasses.asdict(cfg), "relaunch": relaunch}
  _reconcile(work, args, log or (lambda message: None))
  write_spec(work, BUILDER, args)
  (work / "stats" / "done" / f"{0:06d}.json").unlink(missing_ok=True)   # always re-summed
  workers = cfg.workers or os.cpu_count() or 1
  if run_pipeline(work, executor, tasks or workers, workers, log) is not None:
    return {}
  return json.loads((pathlib.Path(out_dir) / "stats.json").read_text(encoding="utf-8"))


def _reconcile(work: pathlib.Path, args: dict, log) -> None:
  """Keeps what a previous launch finished unless its input or config differ (then redone)."""
  if not (work / SPEC).exists():
    return
  old = json.loads((work / SPEC).read_text(encoding="utf-8"))["args"]
  same_files = [p[:2] for p in old["inputs"]] == [p[:2] for p in args["inputs"]]
  layout_free = lambda c: {k: v for k, v in c.items() if k != "workers"}   # noqa: E731
  if layout_free(old["config"]) != layout_free(json.loads(json.dumps(args["config"]))) or \
      not same_files:
    log(f"{work}: the config or the set of input files changed since the last launch; "
        "starting over")
    shutil.rmtree(work)
    return
  changed = [i for i, (a, b) in enumerate(zip(old["inputs"], args["inputs"])) if a != b]
  if not changed:
    return
  log(f"input changed since the last launch: {', '.join(args['inputs'][i][0] for i in changed)};"
      " its scan and every later stage are redone")
  for i in changed:
    (work / "scan" / "done" / f"{i:06d}.json").unlink(missing_ok=True)
  for stage_dir in work.iterdir():
    if stage_dir.is_dir() and stage_dir.name not in ("scan", "slurm"):
      shutil.rmtree(stage_dir)
  for name in ("index.json", "survivors.json", "log_q.npy", "minhash_removed.npy",
               "kl_threshold.json"):
    (work / name).unlink(missing_ok=True)


def check_resources(cfg):
  """Word list and models load here first: a worker initialiser that raises makes a
  multiprocessing Pool respawn workers forever instead of failing."""
  for name, path in (("filters.dirty_words_path", cfg.filters.dirty_words_path),
                     ("langid.model_path", cfg.langid.model_path),
                     ("quality.model_path", cfg.quality.model_path)):
    if path and not pathlib.Path(path).is_file():
      raise CurationInputError(f"{name} {path!r} does not exist")
  passes.init_worker(cfg)          # raises on a file of the wrong kind


def output_paths(files, root, out) -> list[pathlib.Path]:
  """Where each input's kept documents go; an output inside the input, or two inputs written
  to one output, is a CurationInputError."""
  if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
    raise CurationInputError(f"output directory {str(out)!r} is inside the input directory; "
                             "its files would be read as input on the next run")
  paths = [out / str(p.relative_to(root)).removesuffix(".gz") for p in files]
  seen = {}
  for src, dst in zip(files, paths):
    if dst in seen:
      raise CurationInputError(f"{seen[dst]} and {src} would both be written to {dst}; "
                               "rename one of them")
    seen[dst] = src
  return paths
