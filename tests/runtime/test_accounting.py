"""The decisions and the bookkeeping, without a model: the bad-step guard, the goodput timeline,
the straggler flags, the fault specs."""

import json

import numpy as np
import pytest

from llama3_jax.runtime import stragglers
from llama3_jax.runtime.faults import Faults
from llama3_jax.runtime.goodput import CATEGORIES, Timeline
from llama3_jax.runtime.guard import Diverged, Guard, GuardConfig


def test_k_non_finite_steps_in_a_row_roll_back_before_the_first():
  guard = Guard(GuardConfig(max_bad_steps=3))
  assert not guard.check(1, 5.0, False).rollback
  assert not guard.check(2, float("nan"), True).rollback
  assert not guard.check(3, 4.9, False).rollback          # the run of bad steps is broken
  assert not guard.check(4, float("nan"), True).rollback
  assert not guard.check(5, float("inf"), True).rollback
  verdict = guard.check(6, float("nan"), True)
  assert verdict.rollback and verdict.before == 3       # the state before step 4
  assert guard.rollbacks == 1


def test_too_many_rollbacks_give_up():
  guard = Guard(GuardConfig(max_bad_steps=1, max_rollbacks=1))
  assert guard.check(1, float("nan"), True).rollback
  with pytest.raises(Diverged, match="after 1 rollbacks"):
    guard.check(2, float("nan"), True)


@pytest.mark.parametrize("action", ["log", "skip"])
def test_loss_spike_against_the_running_mean(action):
  guard = Guard(GuardConfig(spike_margin=0.5, spike_window=4, spike_action=action))
  for step, loss in enumerate([4.0, 3.9, 3.8, 3.7], 1):
    assert not guard.check(step, loss, False).spike
  assert not guard.check(5, 5.7, False).spike            # mean 3.85: 5.7 < 1.5 x 3.85
  verdict = guard.check(6, 6.5, False)                   # mean 4.275: 6.5 > 1.5 x 4.275
  assert verdict.spike and verdict.rollback == (action == "skip")
  assert verdict.before == (5 if action == "skip" else 0)
  assert guard.spikes == 1


def test_spikes_are_not_judged_before_the_window_fills():
  guard = Guard(GuardConfig(spike_margin=0.1, spike_window=3))
  assert not guard.check(1, 1.0, False).spike
  assert not guard.check(2, 9.0, False).spike


def events(*items):
  return [dict(zip(("kind", "t", "s", "step"), item)) for item in items]


def test_goodput_timeline_moves_redone_steps_to_lost():
  timeline = Timeline()
  for event in events(
      ("start", 100.0), ("startup", 104.0, 4.0), ("compile", 106.0, 2.0, 1),
      ("step", 107.0, 1.0, 2), ("checkpoint", 107.5, 0.5), ("step", 108.5, 1.0, 3),
      ("step", 109.5, 1.0, 4),                               # dies; last checkpoint: step 2
      ("start", 112.0), ("startup", 114.0, 2.0), ("restore", 114.5, 0.5),
      ("resume", 114.5, None, 2), ("compile", 116.5, 2.0, 3), ("skipped", 117.0, 0.5, 4),
      ("step", 118.0, 1.0, 5), ("checkpoint", 118.2, 0.2), ("other", 118.5, 0.3)):
    timeline.apply({k: v for k, v in event.items() if v is not None})
  summary = timeline.summary()
  assert summary["attempts"] == 2
  assert summary["wall_s"] == pytest.approx(18.5)
  assert summary["restart_s"] == pytest.approx(2.5)     # 109.5 -> 112.0
  assert summary["lost_s"] == pytest.approx(2.0)        # steps 3 and 4 of the first attempt
  assert summary["productive_s"] == pytest.approx(2.0)  # steps 2 and 5
  assert summary["compile_s"] == pytest.approx(4.0) and summary["skipped_s"] == 0.5
  assert sum(summary[f"{name}_s"] for name in CATEGORIES) == pytest.approx(summary["wall_s"])
  assert summary["other_s"] == pytest.approx(0.3)
  assert summary["goodput"] == pytest.approx(2.0 / 18.5)


def test_goodput_file_round_trip(tmp_path):
  from llama3_jax.runtime.goodput import Goodput
  recorder = Goodput(tmp_path, started_at=0.0)
  recorder.lap("startup")
  recorder.lap("step", step=1)
  recorder.close()
  again = Goodput(tmp_path, started_at=recorder.timeline.last_t)   # a second attempt
  again.resume(0)                                                  # from scratch: step 1 lost
  summary = again.summary()
  assert summary["attempts"] == 2 and summary["productive_s"] == 0
  lines = [json.loads(line) for line in (tmp_path / "goodput.jsonl").read_text().splitlines()]
  assert [e["kind"] for e in lines] == ["start", "startup", "step", "start", "resume"]


def test_straggler_is_blamed_on_the_late_process():
  # [processes, steps, (step, step_s, host_s)]: process 1 stalls 2 s before step 4.
  times = np.zeros((2, 6, 3))
  times[:, :, 0] = np.arange(1, 7)
  times[:, :, 1] = 0.2
  times[:, :, 2] = 0.01
  times[:, 3, 1] = 2.2            # everyone sees the long step
  times[1, 3, 2] = 2.0            # only process 1 spent it on its own work
  flags = stragglers.flag(times, factor=3.0)
  assert [(f["step"], f["processes"]) for f in flags] == [(4, [1])]
  assert "step 4" in stragglers.describe(flags[0])
  assert "process 1" in stragglers.describe(flags[0])
  times[1, 3, 2] = 0.01          # a slow step no host explains: device or network
  assert stragglers.flag(times, factor=3.0)[0]["processes"] == []


def test_fault_specs():
  faults = Faults({"kill": "2:before:p1,4:during:p0:a1", "sleep": "3:0.5", "nan_batches": "2,5"},
                  process=1, attempt=0)
  assert [(f.step, f.what) for f in faults.kills] == [(2, "before")]
  assert [(f.step, f.what) for f in faults.sleeps] == [(3, "0.5")]
  batch = {"targets": np.zeros((2, 4), np.int32), "loss_mask": np.ones((2, 4), np.float32)}

  class Source:
    fields = ("targets", "loss_mask")
    def read(self, number, stage_index, stage, rows):
      return batch

  source = faults.wrap(Source())
  assert np.isnan(source.read(5, 0, None, (0, 2))["loss_mask"]).all()
  assert source.read(4, 0, None, (0, 2)) is batch
  assert source.fields == Source.fields
  assert Faults({}, process=0).wrap(batch) is batch   # no NaN batches: nothing wrapped
  with pytest.raises(ValueError, match="STEP:WHAT"):
    Faults({"kill": "soon"}, process=0, attempt=0)
  with pytest.raises(ValueError, match="moment 'later'"):
    Faults({"kill": "2:later"}, process=0, attempt=0)
