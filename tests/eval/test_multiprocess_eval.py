"""Evaluation and generation as multi-process jobs: `python -m launch.local --processes 2
--devices-per-process 4 -- python -m experiments.evaluate` (the model sharded fsdp x tensor over
both processes) writes the results and samples that one process on one device writes, and
`experiments.generate` gives one device's tokens (sampling, K samples of a prompt sharing its
prefill). Log-likelihoods within 1e-5 relative (fp32, another order of the sums); accuracies,
generations and tokens equal."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from tests.helpers import tiny_run_config

pytestmark = pytest.mark.slow   # subprocess jobs
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mp_eval") / "run"
  cfg = tiny_run_config(steps=2)
  cfg.model.max_seq_len = 256
  train(run_config(cfg), workdir)
  return workdir


def launch(module, args, processes: int, devices: int, tmp_path, code: int = 0):
  """`python -m module args` on `processes` x `devices` CPU devices (launch.local for more than
  one process); its output, once it exited with `code`."""
  env = {**os.environ, "PYTHONPATH": str(ROOT),
         "XLA_FLAGS": " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                               if "device_count" not in f),
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache")}
  command = [sys.executable, "-m", module, *map(str, args)]
  if processes > 1:
    command = [sys.executable, "-m", "launch.local", "--processes", str(processes),
               "--devices-per-process", str(devices), "--max-restarts", "0", "--", *command]
  else:
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == code, (done.stdout + done.stderr)[-3000:]
  return done.stdout + done.stderr


def close(a, b, where=""):
  """Equal structures; floats within 1e-5 relative, everything else equal."""
  if isinstance(a, dict):
    assert a.keys() == b.keys(), where
    for key in a:
      close(a[key], b[key], f"{where}/{key}")
  elif isinstance(a, list):
    assert len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      close(x, y, f"{where}[{i}]")
  elif isinstance(a, float) and not np.isnan(a):
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6), where
  else:
    assert a == b or (a != a and b != b), where


def test_evaluate_on_two_processes_scores_like_one_device(run, tmp_path, tokenizer):
  from llama3_jax.data import corpus
  choice = tmp_path / "choice.jsonl"   # 4 choices: the robustness variants apply
  choice.write_text("".join(json.dumps({"query": f"{i} plus one is", "choices": [
      str(i + 1), str(i + 2), str(i + 3), str(i)], "gold": 0}) + "\n" for i in range(6)))
  answer = tmp_path / "answer.jsonl"
  answer.write_text("".join(json.dumps({"question": f"What is {i} + 2?", "answer": str(i + 2)})
                            + "\n" for i in range(6)))
  args = [f"--checkpoint={run}", f"--tasks=heldout,{choice},{answer}", "--shots=1",
          "--robustness", f"--contamination={corpus.embedded_corpus()}", "--needle=128",
          "--max_new_tokens=4"]
  outputs = {}
  for name, processes, devices, mesh in (("one", 1, 1, []), ("two", 2, 4, ["--mesh=tensor=2"])):
    out = tmp_path / name
    log = launch("experiments.evaluate", [*args, *mesh, f"--out={out}/results.json",
                                          f"--log_samples={out}/samples.jsonl"],
                 processes, devices, tmp_path)
    outputs[name] = (json.loads((out / "results.json").read_text()),
                     [json.loads(line) for line in (out / "samples.jsonl").read_text()
                      .splitlines()])
    if processes > 1:   # process 0 alone reports and writes
      assert "[p0] results in" in log and "[p1] results in" not in log
  (one, one_samples), (two, two_samples) = outputs["one"], outputs["two"]
  assert {"heldout", "choice", "answer", "needle"} == set(one)
  assert len(one["choice"]["robustness"]["variants"]) == 16 and one["choice"]["contamination"]
  close(one, two)
  close(one_samples, two_samples)
  assert [s["generation"] for s in one_samples if s["task"] == "answer"] == [
      s["generation"] for s in two_samples if s["task"] == "answer"]


def test_generate_on_two_processes_gives_one_devices_tokens(run, tmp_path):
  from llama3_jax.checkpoint.model import load_model, run_tokenizer
  from llama3_jax.infer.generate import Generator, Sampling
  prompts = tmp_path / "prompts.jsonl"
  texts = ["The history of", "def main():", "Solve 12 + 30 ="]
  prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
  out = tmp_path / "out.jsonl"
  launch("experiments.generate", [f"--checkpoint={run}", f"--prompts={prompts}", f"--out={out}",
                                  "--samples=2", "--temperature=1.0", "--top-p=0.9", "--seed=3",
                                  "--max-new-tokens=6", "--mesh=fsdp=2,tensor=2,data=2"],
         2, 4, tmp_path)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  # One device, in this process: the same requests.
  _, model = load_model(run)
  tokenizer = run_tokenizer(run)
  expected = Generator(model, stop_ids=(tokenizer.eos_id,)).generate(
      [tokenizer.encode(t, bos=True) for t in texts], max_new_tokens=6, samples=2,
      sampling=Sampling(temperature=1.0, top_p=0.9, seed=3))
  assert [(r["prompt"], r["sample"]) for r in rows] == [(t, j) for t in texts for j in (0, 1)]
  assert [r["tokens"] for r in rows] == [tokens for e in expected for tokens in e.tokens]
  assert any(r["tokens"] != rows[0]["tokens"] for r in rows[1:])   # draws differ


def test_a_layout_that_does_not_fit_the_job_is_one_line_before_any_work(run, tmp_path):
  """2 processes x 3 devices: FSDP over 6 devices does not split d_model=32, nor does a mesh
  of 8; a process says so in one line (the launcher stops the other, which may not get to
  say it too), exit 2, and nothing is written."""
  out = tmp_path / "results.json"
  for mesh, message in (("", "d_model=32 is not divisible by fsdp=6"),
                        ("fsdp=4,tensor=2", "multiply to 8, but there are 6 devices")):
    log = launch("experiments.evaluate", [f"--checkpoint={run}", "--tasks=arith",
                                          f"--mesh={mesh}", f"--out={out}"], 2, 3, tmp_path,
                 code=2)
    errors = [line for line in log.splitlines() if "error:" in line]
    assert errors and all(message in line and "--mesh" in line for line in errors), log
    assert "Traceback" not in log and not out.exists()
