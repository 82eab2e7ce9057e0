"""The report's two-step forecast of downstream accuracy (Llama 3 §3.2.1, Figure 4).

    fc = two_step(records, chance=0.25)             # records: sweep.jsonl lines with
    fc.accuracy_at(1e14)                            #   "nll_per_char" and "accuracy" columns

Step 1: the normalised negative log-likelihood of the correct answer (per character of the
answer) of the compute-optimal models as a function of training FLOPs, a power law (a straight
line in log-log space). Step 2: accuracy as a sigmoid of that NLL, fitted on every model of the
sweep: accuracy = chance + (ceiling - chance) / (1 + exp((nll - mid) / scale)). The forecast at a
budget is step 2 of step 1; its 95% interval comes from refitting both steps on bootstrap
resamples of the points. The compute-optimal model of a budget is its point of lowest held-out
loss. The multiple-choice scorer that measures the two columns is the evaluation issue's
(llama3_jax/eval/); this module only fits them.
"""

import dataclasses

import numpy as np

from llama3_jax.scaling.fit import FitError, group_by_budget, interval, power_law


def sigmoid(nll, mid: float, scale: float, chance: float, ceiling: float = 1.0):
  return chance + (ceiling - chance) / (1 + np.exp((np.asarray(nll, float) - mid) / scale))


def fit_sigmoid(nll, accuracy, chance: float, ceiling: float = 1.0) -> tuple[float, float]:
  """(mid, scale) of the accuracy sigmoid, least squares (scipy's curve_fit)."""
  from scipy.optimize import curve_fit
  nll, accuracy = np.asarray(nll, float), np.asarray(accuracy, float)
  if len(nll) < 3:
    raise FitError(f"the accuracy sigmoid needs at least 3 models, got {len(nll)}")
  p0 = (float(np.median(nll)), float(max(np.std(nll), 1e-3)))
  (mid, scale), _ = curve_fit(lambda x, m, s: sigmoid(x, m, s, chance, ceiling), nll, accuracy,
                              p0=p0, bounds=([-np.inf, 1e-6], [np.inf, np.inf]), maxfev=20000)
  return float(mid), float(scale)


def compute_optimal(records) -> list[dict]:
  """The point of lowest held-out loss of each budget."""
  return [min(rs, key=lambda r: r["loss"]) for rs in group_by_budget(records).values()]


@dataclasses.dataclass(frozen=True)
class TwoStep:
  nll_A: float             # step 1: nll_per_char = nll_A * FLOPs^nll_alpha
  nll_alpha: float
  mid: float               # step 2: the sigmoid's midpoint and scale (in nll per char)
  scale: float
  chance: float
  ceiling: float
  replicates: tuple = ()   # (nll_A, nll_alpha, mid, scale) of the bootstrap refits

  def nll_at(self, flops):
    return self.nll_A * np.asarray(flops, float)**self.nll_alpha

  def accuracy_at(self, flops):
    return sigmoid(self.nll_at(flops), self.mid, self.scale, self.chance, self.ceiling)

  def interval_at(self, flops) -> dict:
    """95% intervals of the forecast NLL and accuracy at `flops` (from the replicates)."""
    if not self.replicates:
      return {}
    nll = [a * flops**alpha for a, alpha, _, _ in self.replicates]
    acc = [float(sigmoid(n, m, s, self.chance, self.ceiling))
           for n, (_, _, m, s) in zip(nll, self.replicates)]
    return {"nll_95": interval(nll), "accuracy_95": interval(acc)}


def two_step(records, chance: float, ceiling: float = 1.0, replicates: int = 500,
             seed: int = 0) -> TwoStep:
  """Fits both steps on `records` (each with flops, loss, nll_per_char, accuracy)."""
  usable = [r for r in records if r.get("nll_per_char") is not None
            and r.get("accuracy") is not None]
  if len(usable) < 3:
    raise FitError(f"{len(usable)} sweep points have nll_per_char and accuracy; the forecast "
                   "needs at least 3 (measure the multiple-choice task on the sweep's models)")

  def fit(points):
    optimal = compute_optimal(points)
    a, alpha = power_law([r["flops"] for r in optimal], [r["nll_per_char"] for r in optimal])
    mid, scale = fit_sigmoid([r["nll_per_char"] for r in points],
                             [r["accuracy"] for r in points], chance, ceiling)
    return a, alpha, mid, scale

  a, alpha, mid, scale = fit(usable)
  rng = np.random.default_rng(seed)
  refits = []
  for _ in range(replicates):
    sample = [usable[i] for i in rng.integers(0, len(usable), len(usable))]
    try:
      refits.append(fit(sample))
    except (FitError, RuntimeError, ValueError, np.linalg.LinAlgError):
      continue   # a resample with too few budgets or a sigmoid that does not converge
  return TwoStep(a, alpha, mid, scale, chance, ceiling, tuple(refits))
