"""The fitters recover known laws; Llama 3's published fit gives its recommendation.

Synthetic points follow Chinchilla's fitted law L(N, D) = 1.69 + 406.4 / N^0.34 + 410.7 / D^0.28
on IsoFLOP grids (C = 6ND, budgets 6e18..1e22 like the report's sweep), centred on a guess that
is off the true optimum by up to ~35%; its compute-optimal exponents are b / (a + b) = 0.452 for
N and a / (a + b) = 0.548 for D.
"""

import numpy as np
import pytest

from llama3_jax.scaling import fit

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
N_EXPONENT, D_EXPONENT = BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)


def chinchilla_grid(noise: float = 0.0, seed: int = 0, sizes: int = 9, spread: float = 8.0):
  rng = np.random.default_rng(seed)
  g = (ALPHA * A / (BETA * B))**(1 / (ALPHA + BETA))
  records = []
  for budget in np.geomspace(6e18, 1e22, 7):
    guess = g * (budget / 6)**N_EXPONENT * np.exp(rng.uniform(-0.3, 0.3))
    for n in guess * np.geomspace(1 / spread, spread, sizes):
      d = budget / (6 * n)
      loss = (E + A / n**ALPHA + B / d**BETA) * (1 + noise * rng.standard_normal())
      records.append({"budget": budget, "params": n, "tokens": d, "loss": loss})
  return records


def test_exponents_match_chinchilla_reference():
  assert N_EXPONENT == pytest.approx(0.452, abs=5e-4)
  assert D_EXPONENT == pytest.approx(0.548, abs=5e-4)


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_isoflop_parabolas_recover_the_exponents(noise):
  laws = fit._laws(fit.minima(fit.group_by_budget(chinchilla_grid(noise))))
  assert laws["params_alpha"] == pytest.approx(N_EXPONENT, abs=0.02)
  assert laws["tokens_alpha"] == pytest.approx(D_EXPONENT, abs=0.02)


@pytest.mark.parametrize("noise", [0.0, pytest.param(0.005, marks=pytest.mark.slow)])
def test_approach3_recovers_the_exponents(noise):
  records = chinchilla_grid(noise)
  a3 = fit.approach3([r["params"] for r in records], [r["tokens"] for r in records],
                     [r["loss"] for r in records])
  assert a3["params_alpha"] == pytest.approx(N_EXPONENT, abs=0.02)
  assert a3["tokens_alpha"] == pytest.approx(D_EXPONENT, abs=0.02)
  if noise == 0:
    assert (a3["E"], a3["a"], a3["b"]) == pytest.approx((E, ALPHA, BETA), rel=1e-3)


def test_bootstrap_interval_covers_the_truth_and_is_deterministic():
  groups = fit.group_by_budget(chinchilla_grid(0.005))
  boot = fit.bootstrap(groups, replicates=200, seed=0, at=(1e23,))
  low, high = fit.interval(boot["tokens_alpha"])
  assert low < D_EXPONENT < high and high - low < 0.1
  again = fit.bootstrap(groups, replicates=200, seed=0, at=(1e23,))
  assert again["tokens_alpha"] == boot["tokens_alpha"]
  assert len(boot["tokens_at_1e+23"]) == 200 - boot["dropped"]


def test_llama3_published_fit_recommends_16T_tokens():
  # Figure 3's legend: D*(C) = 0.299 C^0.537 (the text rounds to 0.29, 0.53). At 3.8e25 FLOPs:
  # ~16.3T tokens (the report: 16.55T), and with C = 6ND ~389B parameters (the report: 402B).
  tokens, params = fit.recommend(0.299, 0.537, 3.8e25)
  assert tokens == pytest.approx(16.3e12, rel=0.01)
  assert tokens == pytest.approx(16.55e12, rel=0.03)
  assert params == pytest.approx(402e9, rel=0.05)


def test_power_law_is_exact_on_a_line():
  budgets = np.geomspace(1e18, 1e22, 5)
  a, alpha = fit.power_law(budgets, 0.3 * budgets**0.5)
  assert (a, alpha) == pytest.approx((0.3, 0.5), rel=1e-9)


def test_fewer_than_three_sizes_is_a_clear_error():
  with pytest.raises(fit.FitError, match="at least 3"):
    fit.isoflop_minimum(1e20, [1e9, 2e9], [1e8, 5e7], [3.0, 2.9])


def test_minimum_at_the_edge_of_the_grid_says_widen_it():
  records = [r for r in chinchilla_grid() if r["budget"] == 6e18]
  # Keep only the small-model half: the loss falls all the way to the grid's edge.
  edge = sorted(records, key=lambda r: r["params"])[:4]
  with pytest.raises(fit.FitError, match="edge of the grid.*extend the grid toward larger"):
    fit.isoflop_minimum(6e18, [r["tokens"] for r in edge], [r["params"] for r in edge],
                        [r["loss"] for r in edge])


def test_concave_curve_is_a_clear_error():
  with pytest.raises(fit.FitError, match="opens downward"):
    fit.isoflop_minimum(1e20, [1e9, 1e10, 1e11], [1e9, 1e8, 1e7], [3.0, 3.5, 3.0])
