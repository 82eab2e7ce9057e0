"""Scaling-law fits (Llama 3 report §3.2.1, Figures 2 and 3; Chinchilla's approaches 2 and 3).

    minima = [isoflop_minimum(budget, tokens, params, losses) for each budget]   # parabolas
    law = power_law([m.budget for m in minima], [m.tokens for m in minima])    # D*(C) = A C^a
    fit = fit_sweep(records)              # all of it, bootstrap intervals included (fit.json)
    tokens, params = recommend(0.299, 0.537, 3.8e25)                           # Llama 3's fit

Per IsoFLOP budget a second-degree polynomial of held-out loss in log10(tokens) (the report's
Figure 2); its minimum gives the compute-optimal tokens D*(C), and N*(C) from the budget's
points (log params is linear in log tokens along an IsoFLOP curve: C = flops_per_token(N) D).
The power laws D*(C) = A C^alpha and N*(C) are straight lines in log space (Figure 3). Bootstrap
(residual): every budget's losses are redrawn as its parabola plus its residuals resampled with
replacement, and everything refitted; 95% intervals
are the 2.5 and 97.5 percentiles. Cross-check, Chinchilla's approach 3: L(N, D) = E + A / N^a +
B / D^b fitted to all points by a Huber loss on log L with L-BFGS from a grid of starts; with
C = 6ND its compute-optimal exponents are b / (a + b) for N and a / (a + b) for D.

Bad input (FitError, a message naming the fix): fewer than three points (or distinct token
counts) in a budget, a parabola that opens downward, a minimum at the edge of a budget's grid
(the sweep should be wider there: we say so instead of fitting a bogus parabola).
"""

import dataclasses
import itertools
import math

import numpy as np


# Approach 3's starting points: log A and log B, log E, the exponents a and b.
LOG_AB_STARTS, LOG_E_STARTS, EXP_STARTS = (0.0, 5.0, 10.0, 20.0), (0.0, 1.0), (0.2, 0.5, 1.0)


class FitError(ValueError):
  """A sweep that cannot be fitted as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class IsoFlopMinimum:
  budget: float
  tokens: float        # D*(C): the parabola's minimum
  params: float        # N*(C)
  loss: float          # the parabola's value there
  coeffs: tuple        # (a, b, c) of a x^2 + b x + c, x = log10(tokens)


def isoflop_minimum(budget: float, tokens, params, losses, *, edge: str = "error"
                    ) -> IsoFlopMinimum:
  """The compute-optimal point of one IsoFLOP curve (a parabola in log10 tokens).

  `edge`: "error" (default) raises where the minimum lies outside the grid's token range or on
  its outermost points; "allow" fits it anyway (bootstrap replicates).
  """
  x = np.log10(np.asarray(tokens, float))
  y = np.asarray(losses, float)
  logn = np.log10(np.asarray(params, float))
  if len(np.unique(x)) < 3:
    raise FitError(f"budget {budget:.3g} FLOPs has {len(np.unique(x))} distinct model sizes; "
                   "a parabola needs at least 3: run more sizes (--sizes) at this budget")
  a, b, c = np.polyfit(x, y, 2)
  if a <= 0:
    raise FitError(f"budget {budget:.3g} FLOPs: the loss curve opens downward (no minimum); "
                   "the losses are too noisy or the grid too narrow: widen --sizes' spread or "
                   "train longer")
  x_min = -b / (2 * a)
  order = np.sort(np.unique(x))
  if edge == "error" and not order[0] < x_min < order[-1]:
    side = "smaller models (more tokens)" if x_min >= order[-1] else "larger models (fewer tokens)"
    raise FitError(f"budget {budget:.3g} FLOPs: the loss minimum lies at the edge of the grid "
                   f"(10^{x_min:.2f} tokens, grid 10^{order[0]:.2f}..10^{order[-1]:.2f}); "
                   f"extend the grid toward {side} instead of trusting this parabola")
  slope, intercept = np.polyfit(x, logn, 1)
  return IsoFlopMinimum(float(budget), float(10**x_min), float(10**(intercept + slope * x_min)),
                        float(c - b * b / (4 * a)), (float(a), float(b), float(c)))


def power_law(budgets, values) -> tuple[float, float]:
  """(A, alpha) of values = A * budgets^alpha, least squares in log10 space."""
  budgets, values = np.asarray(budgets, float), np.asarray(values, float)
  if np.any(values <= 0) or not np.all(np.isfinite(values)):
    raise FitError(f"a power law needs positive values, got {values.tolist()}")
  if len(budgets) < 2:
    raise FitError(f"a power law needs at least 2 budgets, got {len(budgets)}: run more "
                   "budgets (--budgets)")
  alpha, log_a = np.polyfit(np.log10(budgets), np.log10(values), 1)
  return float(10**np.clip(log_a, -300, 300)), float(alpha)


def law_at(a: float, alpha: float, budget: float) -> float:
  """a * budget^alpha, computed in log space (a bootstrap replicate's wild exponent gives a
  huge number, not an OverflowError)."""
  return float(np.exp(np.clip(np.log(a) + alpha * np.log(budget), -700, 700)))


def recommend(tokens_a: float, tokens_alpha: float, budget: float) -> tuple[float, float]:
  """(tokens, parameters) a D*(C) = A C^alpha fit recommends at `budget`, with C = 6ND.

  Llama 3's D*(C) = 0.299 C^0.537 at 3.8e25 FLOPs: ~16.3T tokens and ~389B parameters (the
  report says 16.55T and 402B, from its unrounded fit)."""
  tokens = tokens_a * budget**tokens_alpha
  return tokens, budget / (6 * tokens)


def group_by_budget(records) -> dict[float, list[dict]]:
  groups = {}
  for r in records:
    groups.setdefault(float(r["budget"]), []).append(r)
  return dict(sorted(groups.items()))


def minima(groups: dict, *, edge: str = "error") -> list[IsoFlopMinimum]:
  return [isoflop_minimum(budget, [r["tokens"] for r in rs], [r["params"] for r in rs],
                          [r["loss"] for r in rs], edge=edge) for budget, rs in groups.items()]


def _laws(found: list[IsoFlopMinimum]) -> dict:
  budgets = [m.budget for m in found]
  tokens_a, tokens_alpha = power_law(budgets, [m.tokens for m in found])
  params_a, params_alpha = power_law(budgets, [m.params for m in found])
  loss_a, loss_alpha = power_law(budgets, [m.loss for m in found])
  return {"tokens_A": tokens_a, "tokens_alpha": tokens_alpha, "params_A": params_a,
          "params_alpha": params_alpha, "loss_A": loss_a, "loss_alpha": loss_alpha}


def bootstrap(groups: dict, replicates: int = 1000, seed: int = 0,
              at: tuple[float, ...] = ()) -> dict:
  """Residual bootstrap of every budget's parabola; refits the minima and the power laws.
  Returns lists per quantity (replicates that cannot be fitted, e.g. a curve made concave by
  its redrawn residuals, are dropped and counted in "dropped"); `at`: budgets to extrapolate
  to."""
  rng = np.random.default_rng(seed)
  out = {"dropped": 0, "minima_tokens": [], "minima_params": [], "minima_loss": []}
  for key in ("tokens_A", "tokens_alpha", "params_A", "params_alpha", "loss_A", "loss_alpha"):
    out[key] = []
  for budget in at:
    out[f"tokens_at_{budget:.3g}"], out[f"loss_at_{budget:.3g}"] = [], []
    out[f"params_at_{budget:.3g}"] = []
  fitted = {}
  for budget, rs in groups.items():   # the parabola of each budget and its residuals
    x = np.log10([r["tokens"] for r in rs])
    coeffs = np.polyfit(x, [r["loss"] for r in rs], 2)
    fitted[budget] = (np.polyval(coeffs, x), np.array([r["loss"] for r in rs]) - np.polyval(
        coeffs, x))
  for _ in range(replicates):
    # Residual bootstrap: the grid (tokens, params) stays; each budget's losses are its
    # parabola plus its residuals drawn with replacement. (Resampling the points themselves
    # leaves fewer than 3 distinct sizes in most replicates of a 5-point budget.)
    sample = {b: [{**r, "loss": float(fitted[b][0][j] + rng.choice(fitted[b][1]))}
                  for j, r in enumerate(rs)] for b, rs in groups.items()}
    try:
      found = minima(sample, edge="allow")
      laws = _laws(found)
    except (FitError, np.linalg.LinAlgError):
      out["dropped"] += 1
      continue
    out["minima_tokens"].append([m.tokens for m in found])
    out["minima_params"].append([m.params for m in found])
    out["minima_loss"].append([m.loss for m in found])
    for key, value in laws.items():
      out[key].append(value)
    for budget in at:
      for what in ("tokens", "params", "loss"):
        out[f"{what}_at_{budget:.3g}"].append(
            law_at(laws[f"{what}_A"], laws[f"{what}_alpha"], budget))
  if len(out["tokens_alpha"]) < replicates // 2:
    raise FitError(f"{out['dropped']} of {replicates} bootstrap replicates could not be fitted; "
                   "the sweep has too few or too noisy points per budget: run more sizes")
  return out


def interval(values, axis=0) -> list:
  """The 95% percentile interval [2.5%, 97.5%]."""
  low, high = np.percentile(np.asarray(values, float), [2.5, 97.5], axis=axis)
  return [np.asarray(low).tolist(), np.asarray(high).tolist()]


# ---- Chinchilla's approach 3 ----------------------------------------------------------------

def _huber(r, delta):
  small = np.abs(r) <= delta
  return np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)), np.where(
      small, r, delta * np.sign(r))


def approach3(params, tokens, losses, delta: float = 1e-3) -> dict:
  """L(N, D) = E + A / N^a + B / D^b by Huber loss on log L (Hoffmann et al. 2022, appendix
  D.2): log L ~ LSE(log A - a log N, log B - b log D, log E), L-BFGS from a grid of starts; the
  best fit wins. Returns E, A, B, a, b and the compute-optimal exponents (C = 6ND)."""
  from scipy.optimize import minimize
  log_n = np.log(np.asarray(params, float))
  log_d = np.log(np.asarray(tokens, float))
  log_l = np.log(np.asarray(losses, float))
  if len(log_l) < 5:
    raise FitError(f"approach 3 fits 5 parameters; {len(log_l)} points are too few")

  def objective(theta):   # theta = (log A, log B, log E, a, b)
    terms = np.stack([theta[0] - theta[3] * log_n, theta[1] - theta[4] * log_d,
                      np.full_like(log_n, theta[2])])
    top = terms.max(0)
    weights = np.exp(terms - top)
    lse = top + np.log(weights.sum(0))
    value, dvalue = _huber(lse - log_l, delta)
    share = weights / weights.sum(0) * dvalue   # d lse / d term, times d huber / d lse
    grad = np.array([share[0].sum(), share[1].sum(), share[2].sum(),
                     -(share[0] * log_n).sum(), -(share[1] * log_d).sum()])
    return value.sum(), grad

  best = None
  # A coarser grid of starts than Chinchilla's (enough here: it recovers known laws, tests).
  for start in itertools.product(LOG_AB_STARTS, LOG_AB_STARTS, LOG_E_STARTS, EXP_STARTS,
                                 EXP_STARTS):
    result = minimize(objective, np.array(start, float), jac=True, method="L-BFGS-B")
    if best is None or result.fun < best.fun:
      best = result
  log_a, log_b, log_e, a, b = best.x
  fit = {"E": math.exp(log_e), "A": math.exp(log_a), "B": math.exp(log_b), "a": a, "b": b,
         "huber_loss": float(best.fun)}
  fit["params_alpha"], fit["tokens_alpha"] = b / (a + b), a / (a + b)
  # N_opt(C) = G (C/6)^(b/(a+b)), D_opt = (C/6)^(a/(a+b)) / G, G = (aA / bB)^(1/(a+b)).
  g = (a * fit["A"] / (b * fit["B"]))**(1 / (a + b)) if a > 0 and b > 0 else float("nan")
  fit["params_A"] = g * 6**(-fit["params_alpha"])
  fit["tokens_A"] = 6**(-fit["tokens_alpha"]) / g
  return fit
