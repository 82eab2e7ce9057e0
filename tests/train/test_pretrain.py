"""The pre-training launcher: exact resume, resume on another mesh or pipeline layout, SIGTERM,
averaging, errors.

In-process runs use the 8 fake devices of conftest.py; the signal and command-line tests start
`python -m experiments.pretrain` as a user would.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from llama3_jax.checkpoint.averaging import average_checkpoints, restore_params
from llama3_jax.train.config import run_config
from llama3_jax.train.loop import train
from llama3_jax.train.metrics import read_metrics
from tests.helpers import tiny_run_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"   # jax.monitoring's name


tiny_config = tiny_run_config


def losses(workdir):
  return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(workdir)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  compiles = []   # XLA compilations of the train step, ahead of time or at a call

  def listen(event, duration, **kwargs):
    if event == BACKEND_COMPILE_EVENT and kwargs.get("fun_name") == "jit(train)":
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    summary = train(run_config(tiny_config()), workdir)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  return workdir, {**summary, "train_compiles": len(compiles)}


def test_straight_run_learns_and_compiles_once_per_stage(straight_run):
  workdir, summary = straight_run
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert {r["seq_len"] for r in rows[:3]} == {16} and {r["seq_len"] for r in rows[3:]} == {32}
  assert summary["compilations"] == 2                   # two stages, six steps
  # The first stage's step, compiled ahead while the state was initialised, is the one the
  # first step ran: XLA compiled the step twice in all, not three times.
  assert summary["train_compiles"] == 2
  assert rows[-1]["lr"] < rows[2]["lr"]
  for key in ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "step_time_s", "mfu"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert rows[-1]["tokens"] == 3 * 128 + 3 * 256
  # The embedded corpus' four sources, counted per source; packing leaves no padding.
  per_source = {k: v for k, v in rows[-1].items() if k.startswith("data/")}
  assert sorted(per_source) == [f"data/{s}_tokens" for s in ("code", "general", "math",
                                                               "multilingual")]
  assert sum(per_source.values()) == rows[-1]["tokens"]
  assert (workdir / "loss_lr.png").stat().st_size > 1000
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_is_bit_identical(straight_run, tmp_path):
  workdir, _ = straight_run
  first = tiny_config(steps=3)
  first.train.schedule_steps = 6          # stop halfway through the same schedule
  train(run_config(first), tmp_path)
  summary = train(run_config(tiny_config(steps=6)), tmp_path)
  assert summary["steps"] == 6
  assert losses(tmp_path) == losses(workdir)   # loss and grad_norm, bit for bit
  assert train(run_config(tiny_config(steps=6)), tmp_path)["complete"]


@pytest.mark.slow
def test_resume_on_another_mesh(straight_run, tmp_path):
  workdir, _ = straight_run
  first = tiny_config(steps=3)            # fsdp 8
  first.train.schedule_steps = 6
  train(run_config(first), tmp_path)
  train(run_config(tiny_config(steps=6, fsdp=2, tensor=4)), tmp_path)
  for (step, loss, norm), (_, ref_loss, ref_norm) in zip(losses(tmp_path), losses(workdir)):
    np.testing.assert_allclose([loss, norm], [ref_loss, ref_norm], rtol=1e-5, err_msg=step)


@pytest.mark.slow
def test_resume_across_pipeline_layouts(tmp_path):
  """3 layers: on stage 2 they pipeline as 1 + 2 (a padded slot), on stage 1 they do not. Half a
  run on one, resumed on the other, equals the whole run on stage 1: checkpoints hold the
  natural layer stack whatever the layout."""
  def config(steps, stage):
    c = tiny_config(steps=steps, stages=((None, 8 * 16, 16),), stage=stage)
    c.model.n_layers = 3
    c.train.schedule_steps = 4
    return c

  train(run_config(config(4, 1)), tmp_path / "straight")
  for first, then in ((2, 1), (1, 2)):
    workdir = tmp_path / f"stage{first}_then_stage{then}"
    train(run_config(config(2, first)), workdir)
    assert train(run_config(config(4, then)), workdir)["steps"] == 4
    for (step, loss, norm), (_, ref_loss, ref_norm) in zip(losses(workdir),
                                                           losses(tmp_path / "straight"),
                                                           strict=True):
      np.testing.assert_allclose([loss, norm], [ref_loss, ref_norm], rtol=1e-5, err_msg=step)


@pytest.mark.slow
def test_corrupt_checkpoint_is_skipped(straight_run, tmp_path):
  workdir, _ = straight_run
  first = tiny_config(steps=4)
  first.train.schedule_steps = 6
  train(run_config(first), tmp_path)
  # Damage every data file of the newest checkpoint.
  for f in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
      f.write_bytes(b"\0" * 7)
  train(run_config(tiny_config(steps=6)), tmp_path)   # resumes from step 3 and redoes 4..6
  assert losses(tmp_path) == losses(workdir)


def test_averaged_parameters_are_the_mean_of_the_annealing_checkpoints(straight_run, tmp_path):
  workdir, summary = straight_run
  # The anneal covers the last 512 tokens: steps 5 and 6 (256 tokens each) are averaged.
  assert summary["averaged_checkpoints"] == 2
  checkpointer = ocp.StandardCheckpointer()
  saved = [checkpointer.restore((workdir / "checkpoints" / str(s) / "state").resolve())["model"]
           for s in (5, 6)]
  averaged = checkpointer.restore((workdir / "averaged_params").resolve())
  for mean, a, b in zip(jax.tree.leaves(averaged), *map(jax.tree.leaves, saved), strict=True):
    np.testing.assert_allclose(mean, (np.asarray(a) + np.asarray(b)) / 2, rtol=1e-6, atol=1e-7)
  # The offline tool gives the same average.
  average_checkpoints([workdir / "checkpoints" / "5", workdir / "checkpoints" / "6"],
                      tmp_path / "offline")
  offline = restore_params(tmp_path / "offline")
  for x, y in zip(jax.tree.leaves(offline), jax.tree.leaves(averaged), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def launch(*args, cwd=ROOT):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.Popen([sys.executable, "-m", "experiments.pretrain", *args], cwd=cwd,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path):
  small = ["--config.model.n_layers=2", "--config.train.steps=400",
           "--config.log.every_steps=1", "--config.checkpoint.every_steps=1000",
           "--workdir=run"]   # relative, as users type it
  process = launch(*small, cwd=tmp_path)
  tmp_path = tmp_path / "run"
  deadline = time.time() + 240
  while len(read_metrics(tmp_path)) < 3 and time.time() < deadline and process.poll() is None:
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 0, err[-2000:]
  assert "stopped by SIGTERM" in out
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert len(saved) == 1 and 3 <= saved[0] < 400
  resumed = launch(*small, f"--config.train.steps={saved[0] + 1}",   # one more step
                   "--config.train.schedule_steps=400", cwd=tmp_path.parent)
  out, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err[-2000:]
  assert f"resumed from step {saved[0]}" in err + out


@pytest.mark.parametrize("args,message", [
    (["--config.train.stepz=3"], "stepz"),
    (["--config.mesh.tensor=3"], "cannot fill 8 devices: 8 is not a multiple of 3"),
    (["--config.train.steps=-2"], "train.steps=-2"),
])
def test_bad_config_fails_clearly(args, message, tmp_path):
  process = launch(*args, f"--workdir={tmp_path}")
  out, err = process.communicate(timeout=120)
  assert process.returncode != 0
  assert message in err
  assert "Traceback" not in err


def test_resuming_another_model_is_a_clear_error_that_keeps_the_checkpoints(tmp_path):
  first = tiny_config(steps=2)
  first.train.schedule_steps = 6
  train(run_config(first), tmp_path)
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  rows = (tmp_path / "metrics.jsonl").read_text()
  other = tiny_config(steps=6)
  other.model.n_layers = 3
  with pytest.raises(ValueError, match=r"another model \(n_layers=2 \(now 3\)\); use a new "
                                       "--workdir"):
    train(run_config(other), tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before   # none set aside
  assert (tmp_path / "metrics.jsonl").read_text() == rows


@pytest.mark.slow
def test_average_checkpoints_command_reads_checkpoints_of_any_device_count(straight_run,
                                                                          tmp_path):
  """As a user runs it: one CPU device reads checkpoints written on 8 (it failed with Orbax's
  "Topology mismatch" when it restored without a target)."""
  workdir, _ = straight_run
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  env.pop("XLA_FLAGS", None)   # one device, not the tests' 8
  done = subprocess.run([sys.executable, "-m", "experiments.average_checkpoints",
                         str(workdir / "checkpoints" / "5"), str(workdir / "checkpoints" / "6"),
                         "--out", str(tmp_path / "avg")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  checkpointer = ocp.StandardCheckpointer()
  offline = restore_params(tmp_path / "avg")
  averaged = checkpointer.restore((workdir / "averaged_params").resolve())
  for x, y in zip(jax.tree.leaves(offline), jax.tree.leaves(averaged), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_a_checkpoint_missing_a_streams_data_state_is_set_aside(straight_run, tmp_path):
  """One stream's iterator state missing: resuming would restart that stream from its first
  document (not exact); the checkpoint is incomplete, set aside, and the previous one used."""
  workdir, _ = straight_run
  first = tiny_config(steps=4)
  first.train.schedule_steps = 6
  train(run_config(first), tmp_path)
  (tmp_path / "checkpoints" / "4" / "data" / "stream_00002.json").unlink()
  train(run_config(tiny_config(steps=6)), tmp_path)   # resumes from step 3
  assert losses(tmp_path) == losses(workdir)
  assert any(p.name.startswith("4.corrupt-") for p in (tmp_path / "checkpoints").iterdir())
  changed = tiny_config(steps=6)
  changed.data.streams = 4
  with pytest.raises(ValueError, match="data.streams=8, now 4: set --config.data.streams=8"):
    train(run_config(changed), tmp_path)


@pytest.mark.slow
def test_no_usable_checkpoint_stops_instead_of_starting_over(tmp_path):
  first = tiny_config(steps=2)
  first.train.schedule_steps = 6
  train(run_config(first), tmp_path)
  rows = (tmp_path / "metrics.jsonl").read_text()
  for step in ("1", "2"):
    for f in (tmp_path / "checkpoints" / step / "state").rglob("*"):
      if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
        f.write_bytes(b"\0" * 7)
  with pytest.raises(ValueError, match=r"no usable checkpoint in .*steps \[1, 2\] were "
                                       "unreadable.*restart_if_unreadable=True"):
    train(run_config(tiny_config(steps=6)), tmp_path)
  assert (tmp_path / "metrics.jsonl").read_text() == rows
  assert sorted(p.name.split(".")[0] for p in (tmp_path / "checkpoints").iterdir()
                if "corrupt" in p.name) == ["1", "2"]   # moved aside, never deleted
  again = tiny_config(steps=6)
  again.checkpoint.restart_if_unreadable = True
  assert train(run_config(again), tmp_path)["steps"] == 6
