"""A training run's model read back, exported to Hugging Face and generated from, as a user would:
`python -m experiments.export_hf` and `python -m experiments.generate` on a tiny run."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from llama3_jax.checkpoint.model import load_model, run_tokenizer
from llama3_jax.infer.generate import Generator
from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from tests.helpers import tiny_run_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  train(run_config(tiny_run_config(steps=4, stages=((None, 8 * 16, 16),))), workdir)
  return workdir


def launch(module, *args):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_load_model_reads_the_parameters_of_the_newest_checkpoint_and_the_average(run):
  config, model = load_model(run)
  saved = ocp.StandardCheckpointer().restore(
      (run / "checkpoints" / "4" / "state").resolve(),
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ocp.StandardCheckpointer()
                   .metadata((run / "checkpoints" / "4" / "state").resolve()).item_metadata.tree))
  for ours, theirs in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                          jax.tree.leaves(saved["model"]), strict=True):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  assert (config.n_layers, config.d_model) == (2, 32)
  _, averaged = load_model(run, averaged=True)
  differs = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(averaged)),
                                                       jax.tree.leaves(nnx.state(model)))]
  assert any(differs)   # steps 3 and 4 are averaged (the anneal covers them)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_model(run / "nowhere")


@pytest.mark.slow
def test_export_loads_in_transformers_alone_and_generation_agrees(run, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  done = launch("experiments.export_hf", "--checkpoint", run, "--out", tmp_path / "hf")
  assert done.returncode == 0, done.stderr[-2000:]
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf",
                                                               local_files_only=True)
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf",
                                                            local_files_only=True)
  tokenizer = run_tokenizer(run)
  _, model = load_model(run)
  text = "The history of mathematics"
  ids = tokenizer.encode(text, bos=True)
  assert hf_tokenizer(text)["input_ids"] == ids
  with torch.no_grad():
    hf_logits = hf_model(torch.tensor([ids])).logits.numpy()[0]
  np.testing.assert_allclose(np.asarray(model(np.array([ids])))[0], hf_logits, rtol=1e-4,
                             atol=1e-4)

  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "The history of"}\n\n{"prompt": "def main():"}\n')
  out = tmp_path / "out.jsonl"
  done = launch("experiments.generate", "--checkpoint", run, "--prompts", prompts, "--out", out,
                "--max-new-tokens", 6)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["prompt"] for r in rows] == ["The history of", "def main():"]
  expected = Generator(model, stop_ids=(tokenizer.eos_id,)).generate(
      [tokenizer.encode(r["prompt"], bos=True) for r in rows], max_new_tokens=6)
  assert [r["tokens"] for r in rows] == [e.tokens[0] for e in expected]
  assert all(isinstance(r["text"], str) for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/run"], "does not exist"),
    (["--prompts", "BAD"], "is not a JSON object with a \"prompt\" string"),
    (["--prompt", "x", "--max-new-tokens", "5000"], "exceeds the model's context"),
])
def test_bad_generate_input_is_one_line_and_exit_2(run, tmp_path, args, message):
  if "BAD" in args:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
    args = [str(bad) if a == "BAD" else a for a in args]
  if "--checkpoint" not in args:
    args = ["--checkpoint", str(run), *args]
  done = launch("experiments.generate", *args)
  assert done.returncode == 2, done.stderr[-2000:]
  assert message in done.stderr and "Traceback" not in done.stderr
