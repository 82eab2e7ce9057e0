"""`python -m experiments.evaluate` as a user runs it: results.json, samples, bad input."""

import json
import os
import subprocess
import sys

import pytest

from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from tests.helpers import tiny_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("eval") / "run"
  cfg = tiny_run_config(steps=2)
  cfg.model.max_seq_len = 256
  train(run_config(cfg), workdir)
  return workdir


def _evaluate(*args):
  return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args],
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_results_and_samples(run, tmp_path):
  task = tmp_path / "mine.jsonl"
  task.write_text("".join(json.dumps({"query": f"{i} plus one is", "choices": [str(i + 1),
                                      str(i + 2)], "gold": 0}) + "\n" for i in range(5)))
  out, samples = tmp_path / "results.json", tmp_path / "samples.jsonl"
  from llama3_jax.data import corpus
  result = _evaluate(f"--checkpoint={run}", f"--tasks=heldout,arith,{task}", "--shots=1",
                     "--robustness",
                     f"--contamination={corpus.embedded_corpus()}", "--needle=128",
                     f"--out={out}", f"--log_samples={samples}")
  assert result.returncode == 0, result.stderr[-2000:]
  results = json.loads(out.read_text())
  assert set(results) == {"heldout", "arith", "mine", "needle"}
  heldout = results.pop("heldout")
  assert heldout["loss"] > 0 and set(heldout["per_source"]) == {"code", "general", "math",
                                                                "multilingual"}
  assert (tmp_path / "needle.png").exists() and len(results.pop("needle")["accuracy"][0]) == 5
  for scores in results.values():
    assert {"acc", "acc_norm", "acc_ci", "n"} <= set(scores) and 0 <= scores["acc"] <= 1
  lines = [json.loads(line) for line in samples.read_text().splitlines()]
  mine = [s for s in lines if s["task"] == "mine"]
  assert [s["index"] for s in mine] == list(range(5))
  assert all(len(s["loglikelihoods"]) == 2 and s["gold"] == 0 for s in mine)
  assert "arith" in result.stdout and "mine" in result.stdout
  assert len(results["arith"]["robustness"]["variants"]) == 16   # the 2-choice task has none
  assert "robustness" not in results["mine"]
  # The math source has "What is a + b?" questions too: partly covered, never above 1.
  rows = results["arith"]["contamination"]
  assert [r["threshold"] for r in rows] == [0.2, 0.4, 0.6, 0.8]
  assert all(0 <= s["contamination"] <= 1 for s in lines)


def test_generative_tasks(run, tmp_path):
  task = tmp_path / "gen.jsonl"
  task.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)})
                          + "\n" for i in range(3)))
  out, samples = tmp_path / "results.json", tmp_path / "samples.jsonl"
  result = _evaluate(f"--checkpoint={run}", f"--tasks=arith_gen,{task}", "--max_new_tokens=4",
                     '--stop=["\\n"]', f"--out={out}", f"--log_samples={samples}")
  assert result.returncode == 0, result.stderr[-2000:]
  results = json.loads(out.read_text())
  assert set(results) == {"arith_gen", "gen"} and results["arith_gen"]["n"] == 400
  for scores in results.values():
    assert {"exact_match", "exact_match_ci", "n"} <= set(scores)
    assert 0 <= scores["exact_match"] <= 1 and scores["stop"] == ["\n"]
  lines = [json.loads(line) for line in samples.read_text().splitlines()]
  mine = [s for s in lines if s["task"] == "gen"]
  assert [s["index"] for s in mine] == [0, 1, 2] and [s["gold"] for s in mine] == ["1", "2", "3"]
  assert all({"generation", "extracted"} <= set(s) and "\n" not in s["generation"]
             for s in lines)
  assert "exact match" in result.stdout


@pytest.mark.parametrize("line, problem", [
    ('{"query": "q", "choices": ["a"], "gold": 3}', "mine.jsonl:1: gold=3"),
    ('{"query": "q", "gold": 0}', "mine.jsonl:1: missing field 'choices'"),
    ('{"question": " ", "answer": "3"}', "mine.jsonl:1: the question is empty"),
])
def test_bad_task_file_is_one_line_and_writes_nothing(run, tmp_path, line, problem):
  task = tmp_path / "mine.jsonl"
  task.write_text(line + "\n")
  out = tmp_path / "results.json"
  result = _evaluate(f"--checkpoint={run}", f"--tasks={task}", f"--out={out}")
  assert result.returncode == 2 and problem in result.stderr
  assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
  assert not out.exists()
