"""Pre-training data curation (report §3.1.1): JSONL in, de-duplicated and filtered JSONL out.

python -m experiments.curate              # the embedded corpus' raw text -> workdirs/curate
python -m experiments.curate --input raw/ --out clean/
python -m experiments.curate --input raw/ --out clean/ --executor ray --tasks 64
python -m experiments.curate --input raw/ --out clean/ --executor slurm --tasks 512
python -m experiments.curate --input raw/ --out clean/ --strict --workers 8 \
    --dirty-words words.txt --config.minhash.threshold=0.8 --config.filters.kl_quantile=0.995
python -m experiments.curate --train-langid langs.jsonl --langid-model langid.npz
python -m experiments.curate --train-quality labelled.jsonl --quality-model quality.npz
python -m experiments.curate --input raw/ --out clean/ --langid-model langid.npz \
    --config.langid.allowed=en,fr --quality-model quality.npz

Reads every *.jsonl / *.jsonl.gz under --input (lines {"text": ..., "url": ..., "timestamp": ...}),
writes the kept documents to the same relative paths under --out (".gz" dropped) and
--out/stats.json: input_lines = kept + sum(removed) + sum(skipped_lines). Malformed lines are
counted (first few listed) unless --strict, which stops at the first with file, line and fix.
The work runs as stages of tasks (llama3_jax/data/curation/stages.py) on --executor: local (a
process pool of --workers, the default), ray (`ray.init()`: the cluster RAY_ADDRESS names, or a
local one) or slurm (writes one job array per stage and --out/_work/slurm/submit.sh). --tasks
is the tasks per stage (default: --workers). Relaunching the same command after a crash runs
only the unfinished tasks; --out/_work holds the stages' files and --out/_work/stats/ a stats
JSON per stage. A missing input, no input files, a bad option, a task failing on bad input:
one line on stderr, exit code 2 (llama3_jax/cli.py).
"""

import collections
import pathlib
import shlex
import sys
import time

from absl import flags
from ml_collections import config_flags

from llama3_jax import cli
from llama3_jax.errors import UserError, check_apart

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "curation.py")
DEFAULT_OUT = "workdirs/curate"


def _define_flags():
  """Defined only when run as a program: spawned workers re-import this module as __mp_main__."""
  config_flags.DEFINE_config_file("config", _DEFAULT, "curation config file")
  flags.DEFINE_string("input", None, "directory of *.jsonl / *.jsonl.gz files")
  flags.DEFINE_string("out", None, "output directory (kept documents + stats.json); default "
                      f"{DEFAULT_OUT} for the embedded corpus")
  flags.DEFINE_enum("executor", "local", ["local", "ray", "slurm"],
                    "who runs the tasks: a process pool, Ray, or SLURM job arrays (files only)")
  flags.DEFINE_integer("tasks", None, "tasks per stage (default: the workers)")
  flags.DEFINE_bool("strict", False, "stop at the first malformed line instead of counting it")
  flags.DEFINE_integer("workers", None, "processes (default: config.workers; 0 = all CPUs)")
  flags.DEFINE_string("dirty-words", None, "word list for the dirty-word filter")
  flags.DEFINE_string("train-langid", None, "labelled {text, lang} JSONL: train language ID")
  flags.DEFINE_string("langid-model", None, "language-ID model (.npz): written when training, "
                      "else applied")
  flags.DEFINE_string("train-quality", None, "labelled {text, label} JSONL: train the quality "
                      "classifier")
  flags.DEFINE_string("quality-model", None, "quality model (.npz): written when training, "
                      "else applied")


def _train(kind: str, data: str, model_path: str | None):
  from llama3_jax.data.curation.langid import LangId
  from llama3_jax.data.curation.quality import QualityModel, parse_label
  from llama3_jax.data.curation.reader import read_labelled
  if not model_path:
    raise UserError(f"--train-{kind} needs --{kind}-model", "give OUT.npz to write the model to")
  if kind == "langid":
    texts, labels, _ = read_labelled(data, "lang")
    model = LangId.train(texts, [str(x) for x in labels])
    correct = sum(model.predict(t)[0] == y for t, y in zip(texts, map(str, labels)))
  else:
    texts, raw, lines = read_labelled(data, "label")
    labels = [parse_label(x, f"{data}:{n}") for x, n in zip(raw, lines)]
    model = QualityModel.train(texts, labels)
    correct = sum((model.score(t) >= 0.5) == y for t, y in zip(texts, labels))
  model.save(model_path)
  print(f"{kind}: trained on {len(texts)} examples, training accuracy "
        f"{correct / len(texts):.1%}; wrote {model_path}")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}", "give every input with --input")
  from llama3_jax.data.curation import CurationConfig, curate
  f = flags.FLAGS
  trained = False
  for kind in ("langid", "quality"):
    if f[f"train-{kind}"].value:
      _train(kind, f[f"train-{kind}"].value, f[f"{kind}-model"].value)
      trained = True
  if trained:
    return
  if f.input and not f.out:
    raise UserError("--input without --out", "give --out DIR for the kept documents")
  if not f.input:
    from llama3_jax.data.corpus import embedded_corpus
    f.input = str(embedded_corpus() / "raw")
    f.out = f.out or DEFAULT_OUT
    print(f"no --input: curating the embedded corpus' raw text ({f.input})")
  # Kept documents go to the inputs' relative paths under --out: never over an input, and
  # never where the next run would read them back as input.
  check_apart(f.out, [("--input", f.input), ("--dirty-words", f["dirty-words"].value),
                      *[(f"--{k}-model", f[f"{k}-model"].value) for k in ("langid", "quality")]])
  c = f.config.to_dict()
  c["read"]["strict"] = c["read"]["strict"] or f.strict
  dead = _dead_links(f.input, c["read"]["strict"])
  if f.workers is not None:
    c["workers"] = f.workers
  if f["dirty-words"].value:
    c["filters"]["dirty_words_path"] = f["dirty-words"].value
  for kind in ("langid", "quality"):
    if f[f"{kind}-model"].value:
      c[kind]["model_path"] = f[f"{kind}-model"].value
  start = time.time()
  relaunch = shlex.join(["python", "-m", "experiments.curate", *sys.argv[1:]])
  stats = curate(f.input, f.out, CurationConfig.from_dict(c), executor=f.executor,
                 tasks=f.tasks or 0, relaunch=relaunch, log=print)
  if not stats:          # slurm: the job files are written, nothing ran here
    print(f"when the jobs finish: kept documents and stats.json in {f.out}")
    return
  removed = ", ".join(f"{k} {v:,}" for k, v in stats["removed"].items() if v)
  skipped = sum(stats["skipped_lines"].values())
  problems = stats["file_problems"] + [{"file": str(p), "reason": "unreadable", "detail":
                                        "a link that leads nowhere (looping or dangling)"}
                                       for p in dead]
  if stats["input_lines"] == skipped:   # not one document: say so, as prepare_data does
    counts = {**stats["skipped_lines"], **collections.Counter(p["reason"] for p in problems)}
    raise UserError(f"--input {f.input}: not one valid document in {stats['files']} files ("
                    + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ")",
                    "check the files and the text field (--config.read.text_field)")
  print(f"kept {stats['kept']:,} of {stats['input_lines']:,} lines "
        f"(removed: {removed or 'none'}; skipped malformed: {skipped:,}) in "
        f"{time.time() - start:.1f} s; wrote the kept documents to {f.out}/, "
        f"{f.out}/stats.json and per-stage stats in {f.out}/_work/stats/")
  for problem in problems:
    print(f"warning: {problem['file']}: {problem['reason']} ({problem['detail']})",
          file=sys.stderr)


def _dead_links(root, strict: bool) -> list[pathlib.Path]:
  """Input links that lead nowhere (looping or dangling), which the reader's file listing never
  sees: an error with --strict, else skipped and counted with the unreadable files."""
  from llama3_jax.data.curation.reader import SUFFIXES
  dead = sorted(p for p in pathlib.Path(root).rglob("*")
                if p.name.endswith(SUFFIXES) and p.is_symlink() and not p.exists())
  if dead and strict:
    raise UserError(f"{dead[0]}: a link that leads nowhere (looping or dangling)",
                    "fix or remove the link, or run without --strict to skip and count it")
  return dead


if __name__ == "__main__":
  cli.run_absl(main, define=_define_flags)
