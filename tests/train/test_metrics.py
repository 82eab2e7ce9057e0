"""The CPU peak behind MFU: measured once per machine, kept at the highest measurement."""

import json

from llama3_jax.train import metrics


def test_cpu_peak_is_measured_once_and_keeps_the_highest(tmp_path, monkeypatch):
  measured = iter([100.0, 80.0, 120.0])
  monkeypatch.setattr(metrics, "measure_matmul_peak", lambda: next(measured))
  cache = tmp_path / "peak.json"
  assert metrics.measured_cpu_peak(cache) == 100.0
  assert metrics.measured_cpu_peak(cache) == 100.0                  # from the cache
  assert metrics.measured_cpu_peak(cache, remeasure=True) == 100.0  # 80: another job was busy
  assert metrics.measured_cpu_peak(cache, remeasure=True) == 120.0
  assert list(json.loads(cache.read_text()).values()) == [120.0]
  cache.write_text("{not json")                                     # a torn write: measured again
  monkeypatch.setattr(metrics, "measure_matmul_peak", lambda: 90.0)
  assert metrics.measured_cpu_peak(cache) == 90.0
