"""The rounds (reward model -> rejection sampling -> SFT -> DPO) end to end: a round killed
(SIGKILL) in the middle of a stage resumes and ends with the same data and metrics as an
uninterrupted one; a finished run is not redone."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from llama3_jax.posttrain import rounds as rounds_lib
from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from llama3_jax.train.metrics import read_metrics
from tests.helpers import tiny_run_config

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[2]
SEQ = 128

CONFIG = '''
from experiments.configs import posttrain
from tests.helpers import tiny_run_config


def stage(steps):
  c = tiny_run_config(steps=steps, stages=((None, 8 * {seq}, {seq}),))
  c.model.size = "init"
  for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
               "ffn_dim", "max_seq_len"):
    c.model[name] = None
  c.train.update(warmup_tokens=None, warmup_fraction=0.2, anneal_tokens=0, peak_lr=3e-3)
  c.checkpoint.async_save = False
  return c


def get_config():
  c = posttrain.get_config()
  c.init_path = "{init}"
  c.task.heldout = 8
  c.rejection.update(prompts=6, samples=3, max_new_tokens=4, annotate=5)
  c.sft_start, c.reward, c.sft, c.dpo = stage(4), stage(4), stage(4), stage(4)
  return c
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("rounds")
  pretrain = tiny_run_config(steps=2)
  pretrain.model.max_seq_len = 256   # room for the post-training rows and generation
  train(run_config(pretrain), root / "pretrain")
  (root / "rounds_config.py").write_text(CONFIG.format(seq=SEQ, init=root / "pretrain"))
  return root


def launch(root, workdir):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.Popen([sys.executable, "-m", "experiments.posttrain", "--config",
                           str(root / "rounds_config.py"), "--workdir", str(workdir)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def outcome(workdir: pathlib.Path) -> dict:
  """What a run made, without timings and with its own path taken out."""
  rounds = json.loads((workdir / "summary.json").read_text())
  for r in rounds:
    r.pop("seconds"), r.pop("samples_per_s")
  files = {}
  for name in ("annotation/pairs.jsonl", "reward_data.jsonl", "rejection/sft.jsonl",
               "rejection/pairs.jsonl", "sft_data.jsonl", "dpo_data.jsonl"):
    for i in (1, 2):
      files[f"round_{i}/{name}"] = (workdir / f"round_{i}" / name).read_text().replace(
          str(workdir), "W")
  metrics = {stage: [(m["step"], m["loss"], m["grad_norm"]) for m in read_metrics(
      workdir / stage)] for stage in ("round_0/sft", "round_1/reward", "round_1/sft",
                                      "round_1/dpo", "round_2/reward", "round_2/dpo")}
  return {"rounds": rounds, "files": files, "metrics": metrics}


def test_a_killed_round_resumes_to_the_same_result(setup, tmp_path):
  straight = launch(setup, tmp_path / "straight")
  log = straight.communicate(timeout=900)[0]
  assert straight.returncode == 0, log[-3000:]
  rounds = json.loads((tmp_path / "straight" / "summary.json").read_text())
  assert [r["round"] for r in rounds] == [1, 2]
  for r in rounds:
    assert {"rm_accuracy", "best_of_k_correct", "random_sample_correct", "exact_match",
            "auc", "best_minus_random_ci", "annotated_pairs"} <= set(r)
    assert all(0 <= r[k] <= 1 for k in ("rm_accuracy", "best_of_k_correct", "exact_match"))
  # Round i's reward model trains on the task's pairs and the pairs of every round's samples to
  # annotate so far, its own included (questions other than those it rejection-samples); DPO
  # on those and the pairs of the rounds' rejection samples.
  w = tmp_path / "straight"
  read = lambda path: [json.loads(line) for line in path.read_text().splitlines()]
  reward = dpo = read(w / "task" / "preferences.jsonl")
  for i in (1, 2):
    reward = reward + read(w / f"round_{i}" / "annotation" / "pairs.jsonl")
    dpo = dpo + read(w / f"round_{i}" / "annotation" / "pairs.jsonl")
    assert read(w / f"round_{i}" / "reward_data.jsonl") == reward
    dpo = dpo + read(w / f"round_{i}" / "rejection" / "pairs.jsonl")
    assert read(w / f"round_{i}" / "dpo_data.jsonl") == dpo
    questions = lambda name: {json.dumps(e["messages"][:-1]) for e in read(
        w / f"round_{i}" / name / "sft.jsonl")}
    assert questions("annotation") and not questions("annotation") & questions("rejection")
  # Killed while round 1's SFT trains (after its first checkpoint), then run again.
  killed = launch(setup, tmp_path / "killed")
  marker = tmp_path / "killed" / "round_1" / "sft" / "checkpoints"
  deadline = time.time() + 900
  while not (marker.exists() and any(p.name.isdigit() for p in marker.iterdir())):
    assert killed.poll() is None and time.time() < deadline, "the run ended before the kill"
    time.sleep(0.2)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert not (tmp_path / "killed" / "summary.json").exists()
  resumed = launch(setup, tmp_path / "killed")
  log = resumed.communicate(timeout=900)[0]
  assert resumed.returncode == 0, log[-3000:]
  assert outcome(tmp_path / "killed") == outcome(tmp_path / "straight")
  # Run again when finished: nothing is redone.
  again = launch(setup, tmp_path / "killed")
  log = again.communicate(timeout=900)[0]
  assert again.returncode == 0 and "round 1:" not in log and "round 0:" not in log, log[-2000:]


def test_a_stopped_stage_stops_the_rounds_to_be_resumed(monkeypatch, tmp_path):
  """A stage stopped by SIGTERM (checkpoint saved) stops the rounds with an exception the
  launcher turns into exit 0 and "run again to resume", not a SystemExit from the library."""
  from experiments.configs import sft
  monkeypatch.setattr(rounds_lib, "run_stage", lambda *args, **kwargs: {"stopped_by": "SIGTERM"})
  with pytest.raises(rounds_lib.RoundsStopped, match=r"stopped by SIGTERM .*run again to resume"):
    rounds_lib._stage(run_config(sft.get_config()), tmp_path / "sft", "sft", tmp_path / "start",
                      tmp_path / "data.jsonl", None, print)
