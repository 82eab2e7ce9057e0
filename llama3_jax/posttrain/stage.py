"""One post-training stage (SFT, DPO or a reward model) end to end: data, training, evaluation,
export.

    summary = run_stage(run, workdir, kind="sft")       # python -m experiments.sft
    summary = run_stage(run, workdir, kind="dpo")       # python -m experiments.dpo
    summary = run_stage(run, workdir, kind="reward")    # python -m experiments.reward_model

`run` is the typed config (llama3_jax/train/config.py). `run.init.path` is the starting model
(a workdir, a step or a Hugging Face directory). The data is `run.data.path`: prepared conversations, or a JSONL file (prepared into WORKDIR/data), or
unset: the shipped arithmetic task (llama3_jax/posttrain/task.py), written to WORKDIR/task.
The run is the one training loop (`train`), with SFT's weighted next-token loss, the DPO
objective or the reward model's ranked pairs; it resumes like pre-training. Afterwards the model
is scored on the task's held-out questions into WORKDIR/eval.json (a policy: greedy exact match
and preference accuracy, the starting model too, once; a reward model: pairwise accuracy and
margin), and exported to Hugging Face format (weights and tokenizer) in WORKDIR/hf (a reward
model as LlamaForSequenceClassification).

Every process of a multi-process job runs the stage alike: the models are read sharded over the
run's own mesh and scored there (llama3_jax/infer/placement.py); process 0 alone writes the
task, the prepared data and eval.json, the others waiting for it (llama3_jax/runtime/job.py).
"""

import json
import pathlib

from llama3_jax.checkpoint import hf
from llama3_jax.checkpoint.model import (init_model_config, is_hf_dir, load_model,
                                         run_tokenizer)
from llama3_jax.data.conversations.prepared import (is_conversation_data, prepare_conversations,
                                                    sha256)
from llama3_jax.errors import UserError
from llama3_jax.infer.placement import Placement
from llama3_jax.objectives import NEXT_TOKEN
from llama3_jax.objectives.reward import RewardLoss
from llama3_jax.posttrain import task
from llama3_jax.posttrain.reward import pairwise_accuracy
from llama3_jax.runtime import job
from llama3_jax.train.config import RunConfig

# stage -> (data kind, the shipped task's file)
KINDS = {"sft": ("sft", "sft"), "dpo": ("preference", "preferences"),
         "reward": ("preference", "preferences")}


def init_tokenizer(path):
  """The tokenizer of the starting model; it must have Llama 3's chat tokens."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"init.path {path} does not exist; give a training workdir, a "
                            "checkpoint step or a Hugging Face directory")
  tokenizer = hf.load_tokenizer(path) if is_hf_dir(path) else run_tokenizer(path)
  for name in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
    tokenizer.special_id(name)   # raises, naming the fix, if a chat token is missing
  return tokenizer


def _tokenizer_path(tokenizer) -> str:
  return str(getattr(tokenizer, "path", ""))


def prepare_data(run: RunConfig, workdir: pathlib.Path, kind: str, tokenizer
                 ) -> tuple[pathlib.Path, pathlib.Path | None]:
  """(the prepared conversations to train on, the held-out file to score or None)."""
  data_kind, task_file = KINDS[kind]
  seq_len = run.train.stages[0].seq_len
  heldout = None
  source = run.data.path
  if not source:
    files = task.write_task(workdir / "task")
    source, heldout = files[task_file], files["heldout"]
  source = pathlib.Path(source)
  if source.is_file():
    out = workdir / "data"

    def prepare():   # process 0; the others read what it wrote
      # The reward model reads every response's <|eot_id|>, in one row with its prompt.
      manifest = prepare_conversations(source, _tokenizer_path(tokenizer), out, kind=data_kind,
                                       max_tokens=seq_len, reward=kind == "reward",
                                       layout="shared" if kind == "reward" else run.dpo.layout)
      skipped = sum(manifest["skipped"].values())
      print(f"data: {manifest['examples']} examples from {source} -> {out} ({skipped} "
            f"skipped, {manifest['truncated']} truncated; details in {out}/manifest.json)")
    job.write_once(f"prepared {out}", prepare)
    source = out
  elif not is_conversation_data(source):
    raise ValueError(f"data.path {source} is neither a JSONL file of conversations nor "
                     "prepared conversation data")
  manifest = json.loads((source / "manifest.json").read_text())
  if manifest["kind"] != data_kind:
    raise ValueError(f"{source} holds {manifest['kind']} data; {kind} needs {data_kind} data")
  if kind == "reward" and not manifest.get("reward"):
    raise UserError(f"{source} was prepared for DPO, not for a reward model (its responses do "
                    "not end in an <|eot_id|> input)", "give the JSONL file, or prepare it with "
                    "prepare_conversations(..., reward=True)")
  expected = _tokenizer_path(tokenizer)
  if expected and sha256(expected) != manifest["tokenizer"]["sha256"]:
    raise ValueError(f"{source} was tokenized with {manifest['tokenizer']['path']}, not the "
                     f"starting model's tokenizer {expected}; prepare it again with that one")
  return source, heldout


def objective_of(run: RunConfig, kind: str):
  if kind == "sft":
    return NEXT_TOKEN   # on rows whose weights select the assistant's tokens
  if kind == "reward":
    return RewardLoss(run.dpo.max_examples_per_row)
  return run.dpo   # the config section is the objective


def placement_of(run: RunConfig) -> Placement:
  """The run's own mesh, where its starting and trained models are read and scored."""
  return Placement.make(run.mesh, init_model_config(run.init.path), sharding=run.sharding)


def read_model(path, placement: Placement, *, kind: str = "lm", averaged: bool = False):
  """The model at `path` (a workdir, a step or a Hugging Face directory), sharded over
  `placement`'s mesh as it is read."""
  if is_hf_dir(path):
    return hf.load(path, mesh=placement.mesh, rules=placement.rules)[1]
  return load_model(path, averaged=averaged, kind=kind, mesh=placement.mesh,
                    rules=placement.rules)[1]


def _start_model(run: RunConfig):
  return read_model(run.init.path, placement_of(run), averaged=run.init.averaged)


def precompute_reference(run: RunConfig, workdir: pathlib.Path) -> pathlib.Path:
  """dpo.reference="precomputed": the starting model's log-probs, stored with the data (the
  directory returned). Every process computes them with the model sharded over the run's mesh;
  process 0 writes them."""
  from flax import nnx
  from llama3_jax.data.conversations.prepared import (add_reference_logps, example_rows,
                                                      read_conversation_manifest, read_records)
  from llama3_jax.objectives.dpo import token_logps
  out, batch_rows = workdir / "data_reference", 32
  logps = []
  if not (out / "manifest.json").exists():   # else add_reference_logps checks it is this one
    model = _start_model(run)
    placement, score = Placement.of(model), nnx.jit(token_logps)
    records = read_records(run.data.path)
    max_tokens = read_conversation_manifest(run.data.path)["max_tokens"]
    for start in range(0, len(records), batch_rows):   # add_reference_logps' batches
      chunk = records[start:start + batch_rows]
      rows = placement.padded_rows(len(chunk))
      batch = example_rows(chunk + [chunk[-1]] * (rows - len(chunk)), max_tokens)
      with placement.active():
        logps.append(placement.fetch(score(model, {k: placement.rows(v)
                                                   for k, v in batch.items()}))[:len(chunk)])
  computed = iter(logps)

  def write():   # process 0; the others read what it wrote
    manifest = add_reference_logps(run.data.path, out, lambda batch: next(computed),
                                   batch_size=batch_rows,
                                   model_path=str(pathlib.Path(run.init.path).resolve()))
    print(f"reference log-probs of {manifest['examples']} examples -> {out}")
  job.write_once(f"{out}", write)
  return out


def run_stage(run: RunConfig, workdir, kind: str, heldout=None) -> dict:
  """Runs (or resumes) the stage; returns the training summary plus the evaluation.
  `heldout`: the shipped task's held-out file to score (default: when the data is the task)."""
  from llama3_jax.train.loop import train
  workdir = pathlib.Path(workdir)
  if not run.init.path:
    raise ValueError(f"{kind} needs a starting model: set --config.init.path=WORKDIR")
  tokenizer = init_tokenizer(run.init.path)
  data_path, task_heldout = prepare_data(run, workdir, kind, tokenizer)
  heldout = task_heldout or heldout
  run = run.with_paths(data=data_path)
  if kind == "dpo" and run.dpo.reference == "precomputed":
    run = run.with_paths(data=precompute_reference(run, workdir))
  evaluation_path = workdir / "eval.json"
  evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.exists() else {}
  examples = task.read_heldout(heldout) if heldout else None
  previous = pathlib.Path(run.init.path) / "eval.json"   # the starting run's own "after"
  if (examples and "before" not in evaluation and previous.exists() and not run.init.averaged
      and kind != "reward"):
    evaluation["before"] = json.loads(previous.read_text()).get("after")
  if examples and not evaluation.get("before") and kind != "reward":   # a new head: no before
    evaluation["before"] = task.evaluate(_start_model(run), tokenizer, examples)
  summary = train(run, workdir, objective=objective_of(run, kind))
  if summary.get("stopped_by"):
    return summary
  finished = (workdir / "hf" / "config.json").exists() and (not examples or "after" in evaluation)
  if summary.get("complete") and finished:   # a rerun of a finished stage: nothing to redo
    return {**summary, "evaluation": evaluation, "hf": str(workdir / "hf")}
  model = read_model(workdir, placement_of(run), kind="reward" if kind == "reward" else "lm")
  if examples:
    evaluation["after"] = (pairwise_accuracy(model, tokenizer, examples) if kind == "reward"
                           else task.evaluate(model, tokenizer, examples))
    job.write_once(f"{evaluation_path}",
                   lambda: evaluation_path.write_text(json.dumps(evaluation, indent=1)))
  hf.save(model, model.config, workdir / "hf", tokenizer=tokenizer)   # every process: sharded
  return {**summary, "evaluation": evaluation, "hf": str(workdir / "hf")}
