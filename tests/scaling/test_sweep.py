"""The sweep planner's grid and bad input; a killed sweep resumes without rerunning points."""

import io
import json
import math

import pytest

from llama3_jax.scaling import family, sweep


def test_plan_spends_each_budget_as_mfu_counts_it():
  points = sweep.plan_sweep([2.5e11, 1e12], sizes=5)
  assert len(points) == 10
  for budget in (2.5e11, 1e12):
    mine = [p for p in points if p.budget == budget]
    assert len({p.batch_tokens for p in mine}) == 1            # one batch size per budget
    assert all(p.steps >= sweep.MIN_STEPS for p in mine)
    for p in mine:   # rounding to whole steps: within half a step of the budget
      per_step = family.flops_per_token(p.config, sweep.SEQ_LEN) * p.batch_tokens
      assert abs(p.flops - budget) <= per_step / 2 + 1
    params = [p.params for p in mine]
    assert params == sorted(params) and params[-1] / params[0] == pytest.approx(2.5**2, rel=0.1)
  assert len({p.name for p in points}) == 10


def test_budget_too_small_for_the_family_is_a_clear_error():
  with pytest.raises(ValueError, match="too small for the model family.*at least"):
    sweep.plan_sweep([1e10], sizes=5)


def test_fewer_than_three_sizes_is_a_clear_error():
  with pytest.raises(ValueError, match="at least 3 model sizes"):
    sweep.plan_sweep([1e12], sizes=2)


def test_point_config_is_a_valid_run():
  from llama3_jax.train.config import run_config
  from llama3_jax.train.plan import make_plan
  point = sweep.plan_sweep([2.5e11], sizes=3)[0]
  plan = make_plan(run_config(sweep.point_config(point)), n_devices=1)
  assert plan.model == point.config and plan.steps == point.steps
  assert plan.tokens[-1] == point.tokens
  assert plan.warmup_tokens == round(0.05 * point.tokens) and plan.anneal_tokens == 0


class Killed(Exception):
  pass


def test_killed_sweep_resumes_without_rerunning(tmp_path):
  points = sweep.plan_sweep([2.5e11, 5e11], sizes=3)
  calls = []

  def measure(point, workdir, seed, peak):
    if len(calls) == 4 and not getattr(measure, "resumed", False):
      raise Killed   # the sweep dies during its fifth point
    calls.append(point.name)
    return {"loss": 3.0 + math.log(point.params) / 100}

  with pytest.raises(Killed):
    sweep.run_sweep(points, tmp_path, measure=measure, out=io.StringIO())
  assert len(sweep.read_records(tmp_path / "sweep.jsonl")) == 4
  with open(tmp_path / "sweep.jsonl", "a") as f:   # a line cut by the kill is not a record
    f.write('{"name": "c5.00e11_n')
  measure.resumed = True
  out = io.StringIO()
  records = sweep.run_sweep(points, tmp_path, measure=measure, out=out)
  assert calls == [p.name for p in points]          # every point ran exactly once
  assert "4 of 6 points already done" in out.getvalue()
  assert [r["name"] for r in records] == [p.name for p in points]
  for r in records:
    assert {"budget", "params", "tokens", "loss", "flops"} <= set(r)


@pytest.mark.slow
def test_real_points_train_resume_and_are_deterministic(tmp_path):
  """Two real (tiny) points through the training loop; a rerun skips both; a third workdir
  with the same seed gives the same held-out loss."""
  point = sweep.Point("tiny", 1e9, family.family_config(15_000), steps=6, batch_tokens=1024)
  other = sweep.Point("tiny2", 1e9, family.family_config(20_000), steps=6, batch_tokens=1024)
  first = sweep.run_sweep([point, other], tmp_path / "a", out=io.StringIO())
  assert [r["name"] for r in first] == ["tiny", "tiny2"]
  assert all(math.isfinite(r["loss"]) and 4 < r["loss"] < 7 for r in first)
  assert all(0 <= r["accuracy"] <= 1 and r["nll_per_char"] > 0 for r in first)
  mtime = (tmp_path / "a" / "points" / "tiny" / "metrics.jsonl").stat().st_mtime
  again = sweep.run_sweep([point, other], tmp_path / "a", out=io.StringIO())
  assert again == first
  assert (tmp_path / "a" / "points" / "tiny" / "metrics.jsonl").stat().st_mtime == mtime
  same = sweep.run_sweep([point], tmp_path / "b", out=io.StringIO())
  assert same[0]["loss"] == first[0]["loss"]
  assert json.loads((tmp_path / "a" / "sweep.jsonl").read_text().splitlines()[0])["loss"] \
      == first[0]["loss"]


def test_a_stopped_point_is_not_recorded(tmp_path, monkeypatch):
  """SIGTERM / Ctrl-C: the loop checkpoints and returns early; the sweep stops, no record."""
  from llama3_jax.train import loop
  monkeypatch.setattr(loop, "train", lambda cfg, workdir: {"stopped_by": "SIGTERM", "steps": 3})
  point = sweep.plan_sweep([2.5e11], sizes=3)[0]
  with pytest.raises(sweep.SweepStopped, match="run again to resume"):
    sweep.run_sweep([point], tmp_path, out=io.StringIO())
  assert sweep.read_records(tmp_path / "sweep.jsonl") == []
