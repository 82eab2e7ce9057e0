"""experiments/scaling_laws.py: --fit-only on a synthetic sweep writes fit.json and the figures,
forecasts a held-out budget; bad input is one line `error: <what>: <fix>` and exit 2."""

import json

import numpy as np
import pytest

from experiments import scaling_laws
from llama3_jax.scaling import forecast
from tests.scaling.test_fit import D_EXPONENT, N_EXPONENT, chinchilla_grid


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _with_task_columns(records):
  """nll_per_char falls as a power law of FLOPs, accuracy a sigmoid of it (plus model-size
  scatter), as a multiple-choice scorer would measure them."""
  for r in records:
    r["flops"] = 6 * r["params"] * r["tokens"]
    r["nll_per_char"] = 40 * r["flops"]**-0.06 * (r["loss"] / 2.0)**0.5
    r["accuracy"] = float(forecast.sigmoid(r["nll_per_char"], 2.5, 0.2, 0.25))
  return records


@pytest.mark.slow   # ~11 s: the bootstrap and three figures; the fast core fits in test_fit.py
def test_fit_only_writes_fit_and_figures_and_forecasts_the_holdout(tmp_path, capsys):
  _write(tmp_path / "sweep.jsonl", _with_task_columns(chinchilla_grid(0.002)))
  scaling_laws.main(["--workdir", str(tmp_path), "--fit-only", "--replicates", "100"])
  fit = json.loads((tmp_path / "fit.json").read_text())
  for key in ("tokens_A", "tokens_alpha", "params_A", "params_alpha", "tokens_alpha_95",
              "approach3", "holdout", "extrapolation", "minima"):
    assert key in fit
  assert fit["tokens_alpha"] == pytest.approx(D_EXPONENT, abs=0.03)
  assert fit["params_alpha"] == pytest.approx(N_EXPONENT, abs=0.03)
  held = fit["holdout"]
  assert held["budget"] == 1e22 and 1e22 not in fit["budgets"]
  # The optimal loss' law is a plain power law (no irreducible term): over the 3 decades of
  # this grid it bends away from Chinchilla's E + ..., so only ~5% here.
  assert held["predicted"]["loss"] == pytest.approx(held["measured"]["loss"], rel=0.05)
  assert held["predicted"]["tokens"] == pytest.approx(held["measured"]["tokens"], rel=0.25)
  assert fit["forecast"]["status"] == "fitted"
  assert fit["forecast"]["holdout"]["accuracy"] == pytest.approx(
      forecast.sigmoid(40 * 1e22**-0.06, 2.5, 0.2, 0.25), abs=0.1)
  for name in ("isoflops.png", "power_law.png", "forecast.png"):
    assert (tmp_path / name).stat().st_size > 10_000
  out = capsys.readouterr().out
  assert "D*(C) =" in out and "holdout C=1e+22" in out


def test_two_step_recovers_its_laws():
  flops = np.geomspace(1e18, 1e22, 12)
  records = [{"budget": f, "flops": f, "loss": 1.0, "nll_per_char": 40 * f**-0.06,
              "accuracy": float(forecast.sigmoid(40 * f**-0.06, 2.5, 0.2, 0.25))}
             for f in flops]   # NLL 3.3 .. 1.9 per character: the sigmoid's middle
  fc = forecast.two_step(records, chance=0.25, replicates=50)
  assert (fc.nll_A, fc.nll_alpha) == pytest.approx((40, -0.06), rel=1e-6)
  assert (fc.mid, fc.scale) == pytest.approx((2.5, 0.2), rel=1e-4)
  low, high = fc.interval_at(1e23)["accuracy_95"]
  assert low <= fc.accuracy_at(1e23) <= high


def _error(capsys, argv):
  from llama3_jax import cli
  with pytest.raises(SystemExit) as exit_info:
    cli.run(scaling_laws.main, argv=argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and len(err.splitlines()) == 1
  return err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
  assert "does not exist" in _error(capsys, ["--workdir", str(tmp_path), "--fit-only"])
  assert "too small for the model family" in _error(
      capsys, ["--workdir", str(tmp_path), "--budgets", "1e9,1e10,1e11"])
  assert "at least 3 model sizes" in _error(
      capsys, ["--workdir", str(tmp_path), "--budgets", "1e12", "--sizes", "2"])
  assert "not a list of numbers" in _error(capsys, ["--budgets", "1e12,lots"])
  grid = chinchilla_grid()
  smallest = sorted((r for r in grid if r["budget"] == 6e18), key=lambda r: r["params"])[:4]
  edge = smallest + [r for r in grid if r["budget"] > 6e18]
  _write(tmp_path / "edge.jsonl", edge)
  assert "edge of the grid" in _error(
      capsys, ["--fit-only", "--sweep", str(tmp_path / "edge.jsonl"), "--workdir",
               str(tmp_path / "out")])
  few = [r for r in chinchilla_grid(sizes=2)]
  _write(tmp_path / "few.jsonl", few)
  assert "at least 3" in _error(
      capsys, ["--fit-only", "--sweep", str(tmp_path / "few.jsonl"), "--workdir", str(tmp_path)])
