"""One post-training stage (SFT or DPO) end to end: data, training, evaluation, export.

    summary = run_stage(cfg, workdir, kind="sft")       # python -m experiments.sft
    summary = run_stage(cfg, workdir, kind="dpo")       # python -m experiments.dpo

`cfg.init.path` is the starting model (a workdir, a step or a Hugging Face directory). The data
is `cfg.data.path`: prepared conversations, or a JSONL file (prepared into WORKDIR/data), or
unset: the shipped arithmetic task (llama3_jax/posttrain/task.py), written to WORKDIR/task.
The run is the one training loop (`train`), with SFT's weighted next-token loss or the DPO
objective; it resumes like pre-training. Afterwards the model is scored on the task's held-out
questions (greedy exact match, preference accuracy; the starting model too, once) into
WORKDIR/eval.json, and exported to Hugging Face format (weights and tokenizer) in WORKDIR/hf.
"""

import json
import pathlib

from llama3_jax.checkpoint import hf
from llama3_jax.checkpoint.model import load_model, run_tokenizer
from llama3_jax.posttrain import task
from llama3_jax.posttrain.data import is_conversation_data, prepare_conversations
from llama3_jax.posttrain.dpo import DPOLoss
from llama3_jax.train.objectives import NEXT_TOKEN

KINDS = {"sft": ("sft", "sft"), "dpo": ("preference", "preferences")}   # data kind, task file


def init_tokenizer(path):
  """The tokenizer of the starting model; it must have Llama 3's chat tokens."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"init.path {path} does not exist; give a training workdir, a "
                            "checkpoint step or a Hugging Face directory")
  tokenizer = hf.load_tokenizer(path) if (path / "config.json").exists() and not (
      path / "checkpoints").exists() else run_tokenizer(path)
  for name in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
    tokenizer.special_id(name)   # raises, naming the fix, if a chat token is missing
  return tokenizer


def _tokenizer_path(tokenizer) -> str:
  return str(getattr(tokenizer, "path", ""))


def prepare_data(cfg, workdir: pathlib.Path, kind: str, tokenizer) -> pathlib.Path | None:
  """Sets cfg.data.path to prepared conversations; returns the held-out file to score, if any."""
  data_kind, task_file = KINDS[kind]
  seq_len = cfg.train.stages[0]["seq_len"]
  heldout = None
  source = cfg.data.path
  if not source:
    files = task.write_task(workdir / "task")
    source, heldout = files[task_file], files["heldout"]
  source = pathlib.Path(source)
  if source.is_file():
    out = workdir / "data"
    manifest = prepare_conversations(source, _tokenizer_path(tokenizer), out, kind=data_kind,
                                     max_tokens=seq_len, layout=cfg.dpo.layout)
    skipped = sum(manifest["skipped"].values())
    print(f"data: {manifest['examples']} examples from {source} -> {out} ({skipped} skipped, "
          f"{manifest['truncated']} truncated; details in {out}/manifest.json)")
    source = out
  elif not is_conversation_data(source):
    raise ValueError(f"data.path {source} is neither a JSONL file of conversations nor "
                     "prepared conversation data")
  manifest = json.loads((source / "manifest.json").read_text())
  if manifest["kind"] != data_kind:
    raise ValueError(f"{source} holds {manifest['kind']} data; {kind} needs {data_kind} data")
  expected = getattr(tokenizer, "path", None)
  if expected and (pathlib.Path(manifest["tokenizer"]["path"]).resolve()
                   != pathlib.Path(expected).resolve()):
    from llama3_jax.posttrain.data import _sha256
    if _sha256(expected) != manifest["tokenizer"]["sha256"]:
      raise ValueError(f"{source} was tokenized with {manifest['tokenizer']['path']}, not the "
                       f"starting model's tokenizer {expected}; prepare it again with that one")
  cfg.data.path = str(source)
  return heldout


def objective_of(cfg, kind: str):
  if kind == "sft":
    return NEXT_TOKEN   # on rows whose weights select the assistant's tokens
  return DPOLoss(cfg.dpo.beta, cfg.dpo.nll_weight, cfg.dpo.max_examples_per_row)


def run_stage(cfg, workdir, kind: str) -> dict:
  """Runs (or resumes) the stage; returns the training summary plus the evaluation."""
  from llama3_jax.train.loop import train
  workdir = pathlib.Path(workdir)
  if not cfg.init.path:
    raise ValueError(f"{kind} needs a starting model: set --config.init.path=WORKDIR")
  tokenizer = init_tokenizer(cfg.init.path)
  heldout = prepare_data(cfg, workdir, kind, tokenizer)
  evaluation_path = workdir / "eval.json"
  evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.exists() else {}
  examples = task.read_heldout(heldout) if heldout else None
  if examples and "before" not in evaluation:
    _, start = load_model(cfg.init.path, averaged=cfg.init.averaged) if not (
        pathlib.Path(cfg.init.path) / "config.json").exists() else hf.load(cfg.init.path)
    evaluation["before"] = task.evaluate(start, tokenizer, examples)
  summary = train(cfg, workdir, objective=objective_of(cfg, kind))
  if summary.get("stopped_by"):
    return summary
  config, model = load_model(workdir)
  if examples:
    evaluation["after"] = task.evaluate(model, tokenizer, examples)
    evaluation_path.write_text(json.dumps(evaluation, indent=1))
  hf.save(model, config, workdir / "hf", tokenizer=tokenizer)
  return {**summary, "evaluation": evaluation, "hf": str(workdir / "hf")}
