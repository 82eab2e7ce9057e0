"""SFT and DPO runs through the one training loop: they start from a pre-trained workdir, learn,
resume bit for bit, and the launchers run end to end (evaluation and Hugging Face export)."""

import json
import os
import subprocess
import sys

import pytest

from llama3_jax.posttrain import task
from llama3_jax.data.conversations.prepared import prepare_conversations
from llama3_jax.objectives.dpo import DPOLoss
from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from llama3_jax.train.metrics import read_metrics
from tests.helpers import tiny_run_config

pytestmark = pytest.mark.slow
SEQ = 128


@pytest.fixture(scope="module")
def start(tmp_path_factory, tokenizer_path):
  """A 2-step pre-training run of a tiny model, and the task's prepared data."""
  root = tmp_path_factory.mktemp("posttrain")
  pretrain = tiny_run_config(steps=2)
  pretrain.model.max_seq_len = 256   # room for the post-training rows and generation
  train(run_config(pretrain), root / "pretrain")
  files = task.write_task(root / "task", train_questions=120, heldout=16)
  for kind, name in (("sft", "sft"), ("preference", "preferences")):
    prepare_conversations(files[name], tokenizer_path, root / name, kind=kind, max_tokens=SEQ)
  return root


def config(start, data: str, steps: int):
  c = tiny_run_config(steps=steps, stages=((None, 8 * SEQ, SEQ),))
  c.model.size = "init"
  for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
               "ffn_dim", "max_seq_len"):
    c.model[name] = None     # unset: the model of init.path
  c.init.path = str(start / "pretrain")
  c.data.path = str(start / data)
  c.train.update(warmup_tokens=None, warmup_fraction=0.2, anneal_tokens=0, peak_lr=3e-3)
  return c


def rows(workdir):
  return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(workdir)]


@pytest.mark.parametrize("data, objective", [("sft", None), ("preferences", DPOLoss())])
def test_runs_learn_and_resume_exactly(start, tmp_path, data, objective):
  kwargs = {} if objective is None else {"objective": objective}
  straight = train(run_config(config(start, data, 6)), tmp_path / "straight", **kwargs)
  assert straight["steps"] == 6
  first = config(start, data, 3)
  first.train.schedule_steps = 6
  train(run_config(first), tmp_path / "resumed", **kwargs)
  train(run_config(config(start, data, 6)), tmp_path / "resumed", **kwargs)
  assert rows(tmp_path / "resumed") == rows(tmp_path / "straight")   # bit for bit
  losses = [loss for _, loss, _ in rows(tmp_path / "straight")]
  assert losses[-1] < losses[0]
  if objective is not None:
    metrics = read_metrics(tmp_path / "straight")
    assert {"reward_margin", "preference_accuracy", "chosen_logp", "rejected_logp"} <= set(
        metrics[-1])


def test_starting_model_is_the_pretrained_one(start, tmp_path):
  """Step 1's loss is the pre-trained model's loss on the batch, not a random model's."""
  import jax
  import numpy as np
  from flax import nnx
  from llama3_jax.checkpoint.model import load_model
  from llama3_jax.train.config import run_config
  from llama3_jax.train.plan import make_plan
  from llama3_jax.train.setup import setup
  cfg = config(start, "sft", 1)
  pretrained_config, pretrained = load_model(start / "pretrain")
  plan = make_plan(run_config(cfg), jax.device_count(), init_model=pretrained_config)
  assert plan.model == pretrained_config
  s = setup(plan.model, plan.mesh)
  state = jax.device_get(s.init_state(nnx.state(pretrained)))
  for a, b in zip(jax.tree.leaves(state["model"]), jax.tree.leaves(nnx.state(pretrained))):
    np.testing.assert_array_equal(a, b)


def _launch(module, *args, env_extra=None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=env, timeout=600)


def test_sft_launcher_evaluates_and_exports(start, tmp_path):
  common = [f"--config.init.path={start / 'pretrain'}", "--config.train.steps=3",
            "--config.mesh.fsdp=8", "--config.mesh.tensor=1", "--config.log.every_steps=1"]
  result = _launch("experiments.sft", *common, f"--workdir={tmp_path / 'sft'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "after: exact match" in result.stdout and "outputs in" in result.stdout
  evaluation = json.loads((tmp_path / "sft" / "eval.json").read_text())
  assert set(evaluation) == {"before", "after"}
  assert 0 <= evaluation["after"]["exact_match"] <= 1 and evaluation["after"]["n"] > 0
  assert (tmp_path / "sft" / "hf" / "config.json").exists()
  assert (tmp_path / "sft" / "hf" / "tokenizer.json").exists()
  again = _launch("experiments.sft", *common, f"--workdir={tmp_path / 'sft'}")   # finished
  assert again.returncode == 0 and "run complete: 3 steps" in again.stdout, again.stderr[-2000:]
  assert json.loads((tmp_path / "sft" / "eval.json").read_text()) == evaluation
  # DPO from the SFT run's Hugging Face export, its reference log-probs precomputed.
  hf_dir = tmp_path / "sft" / "hf"
  result = _launch("experiments.dpo", *common[1:], f"--config.init.path={hf_dir}",
                   "--config.dpo.reference=precomputed", f"--workdir={tmp_path / 'dpo'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert list((tmp_path / "dpo" / "hf").glob("*.safetensors"))
  assert (tmp_path / "dpo" / "data_reference" / "manifest.json").exists()


def test_bad_post_training_input_is_one_line(start, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
  result = _launch("experiments.sft", f"--config.init.path={start / 'pretrain'}",
                   f"--config.data.path={bad}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error:") and "no usable examples" in result.stderr
  assert "Traceback" not in result.stderr
  result = _launch("experiments.dpo", "--config.init.path=/nonexistent",
                   f"--workdir={tmp_path / 'w2'}")
  assert result.returncode == 2 and "does not exist" in result.stderr
