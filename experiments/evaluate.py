"""Evaluate a model on multiple-choice and generative tasks: scores with 95% intervals.

python -m experiments.evaluate                          # workdirs/pretrain on the shipped tasks
python -m experiments.evaluate --checkpoint workdirs/sft --tasks arith,arc_easy.jsonl --shots 5
python -m experiments.evaluate --tasks arith --robustness     # labels, order, bias, prompts
python -m experiments.evaluate --tasks arith_gen,gsm8k_test.jsonl --shots 8 --max_new_tokens 256
python -m experiments.evaluate --tasks "" --needle 256,512,1024 --checkpoint workdirs/long
python -m experiments.evaluate --tasks arith --contamination ~/.cache/llama3_jax/corpus-v2-vocab512
python -m experiments.evaluate --hf /models/Llama-3.2-1B --tasks mmlu_test.parquet \
    --out results.json --log_samples samples.jsonl
python -m experiments.evaluate --checkpoint workdirs/pretrain --mesh fsdp=4,tensor=2
python -m launch.local --processes 2 --devices-per-process 4 -- \
    python -m experiments.evaluate --checkpoint workdirs/pretrain --tasks arith,arith_gen

Tasks: `heldout` (loss and bits per byte per source on the embedded corpus' held-out split, or
name a prepared data directory), shipped ones by name (arith, cloze: multiple choice; arith_gen:
generative) or files: multiple choice (JSONL of {"query", "choices", "gold"}, or ARC, MMLU,
HellaSwag records as JSON, JSONL or Parquet; llama3_jax/eval/tasks.py) or generative (lines with
an "answer" and no "choices": {"query" or "question", "answer"}, GSM8K's records;
llama3_jax/eval/generative.py). Multiple choice follows lm-evaluation-harness's definitions
(llama3_jax/eval/multiple_choice.py); generative tasks are greedy with stop strings, answer
extraction and exact match; neither depends on the batch size. Prints a table; `--out` maps
each task (a file's stem) to acc, acc_norm, acc_ci, acc_norm_ci, gold_nll_per_char and n
(generative: exact_match, exact_match_ci and n); `--log_samples` writes one line per example
(task, index, gold, loglikelihoods; generative: generation, extracted). Exit codes: 0 done, 2
bad input (one line naming the file and line); nothing is half-written.

The model is sharded over all devices of the job as it is read (FSDP; --mesh for other axis
sizes): the rows of each batch are split over the data-like axes and the scores gathered, so
any layout and any process count gives one device's scores. Under launch.local, SLURM or
Kubernetes every process runs this same command; process 0 prints and writes the results.
"""

import json
import os
import pathlib
import re
import tempfile

from absl import app
from absl import flags

from experiments._defaults import MESH_HELP
from llama3_jax.errors import UserError, at_least, check_apart, with_run, writable_file

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a training workdir or checkpoint step "
                                  "(default: workdirs/pretrain, trained first if absent)")
_HF = flags.DEFINE_string("hf", None, "a Hugging Face model directory instead")
_AVERAGED = flags.DEFINE_bool("averaged", False, "the workdir's anneal average")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "a tokenizer file (default: the model's)")
_TASKS = flags.DEFINE_string("tasks", "heldout,arith", "comma-separated: heldout (perplexity), "
                             "a prepared data dir, shipped task names, task files")
_SHOTS = flags.DEFINE_integer("shots", 0, "few-shot examples per question")
_SEED = flags.DEFINE_integer("seed", 1234, "the choice of the shots")
_BATCH = flags.DEFINE_integer("batch_size", 8, "rows per forward pass (scores do not depend "
                              "on it)")
_ROBUSTNESS = flags.DEFINE_bool("robustness", False, "also score the label, option-order, "
                                "label-bias and prompt variants of 4-choice tasks")
_CONTAMINATION = flags.DEFINE_string("contamination", None, "prepared pre-training data to "
                                     "check the examples against (token 8-gram overlap)")
_NEEDLE = flags.DEFINE_string("needle", None, "context lengths for needle in a haystack, e.g. "
                              "256,512 (depths 0, 25, 50, 75, 100%); writes needle.png by --out")
_OUT = flags.DEFINE_string("out", None, "results JSON (default: WORKDIR/eval_results.json)")
_SAMPLES = flags.DEFINE_string("log_samples", None, "per-example JSONL")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "generative tasks: the token budget "
                                "(default: the task's; 256 for files)")
_STOP = flags.DEFINE_string("stop", None, "generative tasks: stop strings as a JSON list "
                            "(default: the task's; [\"\\n\\n\", \"Question:\"] for files)")
_PATTERN = flags.DEFINE_string("answer_pattern", None, "generative tasks: the answer's regex "
                               "(default: 'The final answer is (.+)', else the last number)")
_MESH = flags.DEFINE_string("mesh", "", MESH_HELP)


def _atomic_write(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _contamination(index, tokenizer, examples, samples) -> list[dict]:
  """Per threshold, the contaminated share and the gain it may explain (report §5.1.4)."""
  from llama3_jax.eval.contamination import contamination_report
  coverage = [index.coverage(tokenizer.encode(f"{e.query} {e.choices[e.gold]}"))
              for e in examples]
  correct = [max(range(len(s["loglikelihoods"])), key=s["loglikelihoods"].__getitem__)
             == s["gold"] for s in samples]
  for sample, value in zip(samples, coverage):
    sample["contamination"] = value
  return contamination_report(coverage, correct)


def _check_flags() -> None:
  """Counts are refused, never replaced (--max_new_tokens 0 read as the task's 256), and the
  answer pattern compiles."""
  at_least(_SHOTS.value, 0, "--shots")
  at_least(_BATCH.value, 1, "--batch_size")
  at_least(_MAX_NEW.value, 1, "--max_new_tokens", "give a token budget >= 1, or leave it unset "
           "for the task's")
  if _PATTERN.value is not None:
    try:
      re.compile(_PATTERN.value)
    except re.error as error:
      raise UserError(f"--answer_pattern {_PATTERN.value!r} is not a regular expression "
                      f"({error})", "fix it, e.g. 'The final answer is (.+)'") from None


# A training run's own files, which an --out in its workdir must never replace.
_RUN_FILES = {"metrics.jsonl", "goodput.jsonl", "eval.json", "summary.json"}


def _check_outputs(out: pathlib.Path, names: list[str], checkpoint) -> None:
  """--out and --log_samples can be written, and replace no input (a task file, the run's
  files; earlier results in the run's workdir may be replaced)."""
  inputs = [*(("--tasks", n) for n in names if pathlib.Path(n).exists()),
            *with_run("--checkpoint", checkpoint), ("--hf", _HF.value),
            ("--contamination", _CONTAMINATION.value)]
  for path, flag in ((out, "--out"), (_SAMPLES.value, "--log_samples")):
    if path:
      check_apart(path, inputs, flag, replaceable=lambda p: p.suffix in (".json", ".jsonl")
                  and p.name not in _RUN_FILES)
      writable_file(path, flag)
  if _SAMPLES.value and pathlib.Path(_SAMPLES.value).resolve() == out.resolve():
    raise UserError(f"--log_samples {_SAMPLES.value} is also the results file --out",
                    "give them different paths")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _check_flags()   # before anything starts: counts, the answer pattern
  from experiments._defaults import inference_model, start_job
  start_job()   # 8 CPU devices unless the launcher says otherwise; joins a multi-process job
  from llama3_jax.eval import generative, multiple_choice, robustness, tasks
  from llama3_jax.runtime import job
  names = list(filter(None, _TASKS.value.split(",")))
  # Held-out perplexity: "heldout" (the embedded corpus' held-out split) or a prepared data dir.
  heldout = [n for n in names if n == "heldout" or pathlib.Path(n).is_dir()]
  is_generative = [n for n in names if n in generative.SHIPPED or generative.is_generative(n)]
  task_list = [tasks.read_task(name) for name in names
               if name not in heldout and name not in is_generative]
  generative_list = []
  for name in is_generative:
    task, examples, config = generative.read_task(name)
    generative_list.append((task, examples, generative.config_from_flags(
        config, _MAX_NEW.value, _STOP.value, _PATTERN.value)))
  if not task_list and not generative_list and not heldout and not _NEEDLE.value:
    raise ValueError("--tasks is empty; name a shipped task (arith) or a file")
  lengths = [int(n) for n in filter(None, (_NEEDLE.value or "").split(","))]
  if _CONTAMINATION.value:   # checked before the model is read
    from llama3_jax.eval.contamination import check_prepared
    check_prepared(_CONTAMINATION.value)
  from llama3_jax.sharding import parse_mesh
  parse_mesh(_MESH.value)   # a bad --mesh too
  checkpoint = _CHECKPOINT.value
  if not _HF.value and checkpoint is None:
    from experiments._defaults import ensure_pretrained
    checkpoint = ensure_pretrained()
  out = pathlib.Path(_OUT.value or pathlib.Path(_HF.value or checkpoint) / "eval_results.json")
  _check_outputs(out, names, checkpoint)   # before the model is read and the tasks scored
  model, tokenizer = inference_model(checkpoint, _HF.value, _AVERAGED.value, _TOKENIZER.value,
                                     _MESH.value)
  index = None
  if _CONTAMINATION.value:
    from llama3_jax.eval.contamination import NgramIndex
    index = NgramIndex.from_prepared(_CONTAMINATION.value)
    job.say(f"contamination: {index.added:,} 8-grams of {_CONTAMINATION.value} in a "
            f"{index.bits / 8 / 2**20:.1f} MiB Bloom filter (false-positive rate "
            f"{index.false_positive_rate:.1e})")
  results, samples = {}, []
  for name in heldout:
    from llama3_jax.eval import perplexity
    rows = perplexity.heldout_rows(None if name == "heldout" else name,
                                   seq_len=min(128, model.config.max_seq_len))
    results[pathlib.Path(name).name] = perplexity.evaluate(model, rows)
  for name, examples in task_list:
    scores = multiple_choice.score_task(model, tokenizer, examples, shots=_SHOTS.value,
                                        seed=_SEED.value, batch_size=_BATCH.value, task=name)
    samples += scores.pop("samples")
    if _ROBUSTNESS.value and any(len(e.choices) == 4 for e in examples):
      scores["robustness"] = robustness.robustness(model, tokenizer, examples,
                                                   seed=_SEED.value, batch_size=_BATCH.value)
    if index is not None:
      scores["contamination"] = _contamination(index, tokenizer, examples,
                                               samples[-len(examples):])
    results[name] = scores
  for name, examples, config in generative_list:
    scores = generative.score_generative(model, tokenizer, examples, config, shots=_SHOTS.value,
                                         seed=_SEED.value, batch_size=_BATCH.value, task=name)
    samples += scores.pop("samples")
    results[name] = scores
  if lengths:
    from llama3_jax.eval import needle
    results["needle"] = needle.needle_grid(model, tokenizer, lengths=lengths,
                                           depths=(0.0, 0.25, 0.5, 0.75, 1.0))
  # Every process has the same results; process 0 alone prints and writes them.
  job.write_once("evaluation results", lambda: _report(results, samples, out))


def _report(results: dict, samples: list[dict], out: pathlib.Path) -> None:
  print(f"{'task':<20} {'n':>5} {'chance':>7} {'acc':>15} {'acc_norm':>15} {'nll/char':>9}")
  for name, r in results.items():
    if name == "needle":
      continue
    if "bits_per_byte" in r:   # held-out perplexity
      sources = ", ".join(f"{k} {v['loss']:.3f}" for k, v in r["per_source"].items())
      print(f"{name:<20} {r['tokens']:>5} tokens: loss {r['loss']:.4f} nats, "
            f"{r['bits_per_byte']:.4f} bits/byte ({sources})")
      continue
    if "exact_match" in r:
      print(f"{name:<20} {r['n']:>5} {'':>7} exact match {r['exact_match']:.3f} ± "
            f"{r['exact_match_ci']:.3f} ({r['max_new_tokens']} tokens at most, stop "
            f"{r['stop']})")
      continue
    print(f"{name:<20} {r['n']:>5} {r['chance']:>7.3f} {r['acc']:>7.3f} ± {r['acc_ci']:.3f} "
          f"{r['acc_norm']:>7.3f} ± {r['acc_norm_ci']:.3f} {r['gold_nll_per_char']:>9.3f}")
    for row in r.get("contamination", []):
      print(f"  contamination >= {row['threshold']}: {row['contaminated_share']:.1%} of "
            f"examples, gain {row['gain']:+.3f} [{row['gain_ci'][0]:+.3f}, "
            f"{row['gain_ci'][1]:+.3f}]")
    for family, spread in r.get("robustness", {}).get("families", {}).items():
      variants = {k.split("/")[1]: round(v, 3) for k, v in r["robustness"]["variants"].items()
                  if k.startswith(family + "/")}
      print(f"  {family:<8} spread {spread['spread']:.3f}: {variants}")
  if "needle" in results:
    from llama3_jax.eval import needle
    out.parent.mkdir(parents=True, exist_ok=True)
    needle.plot(results["needle"], out.with_name("needle.png"))
    print(f"needle in a haystack: accuracy {results['needle']['acc']:.3f} by length "
          f"{results['needle']['lengths']} x depth; heat map in {out.with_name('needle.png')}")
  _atomic_write(out, json.dumps(results, indent=1))
  if _SAMPLES.value:
    _atomic_write(pathlib.Path(_SAMPLES.value),
                  "".join(json.dumps(s) + "\n" for s in samples))
  print(f"results in {out}" + (f", samples in {_SAMPLES.value}" if _SAMPLES.value else ""))


if __name__ == "__main__":
  from llama3_jax import cli
  cli.run_absl(main)
