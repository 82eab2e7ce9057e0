"""A sweep's records -> everything fit.json holds: minima, power laws, intervals, approach 3,
the held-out budget's forecast against its measurement, an extrapolation, the two-step forecast.

    result = analyse(records, holdout=2e12, extrapolate=1e14)   # a JSON-ready dict

Counts: `params` are the family's matmul parameters (the N of the launcher's 6N: every weight
matrix, the LM head included, not the input embedding); `tokens` are training tokens; `budget`
is C = flops_per_token * tokens (6N plus attention, exactly the MFU count).
"""

import numpy as np

from llama3_jax.scaling import fit as fits
from llama3_jax.scaling import forecast

PARAMS_COUNT = ("matmul parameters: the N of the launcher's 6N (every weight matrix, the LM head "
                "included; not the input embedding, a lookup; not the norms)")


_FIELDS = ("budget", "params", "tokens", "loss")


def check_records(records) -> None:
  """Every record has a positive finite budget, size, tokens and loss, or a FitError naming the
  record and the field: a NaN loss or a zero budget is not "the edge of the grid" nor "too few
  sizes"."""
  for number, record in enumerate(records, start=1):
    name = record.get("name", "?") if isinstance(record, dict) else "?"
    where = f"record {number} ({name})"
    if not isinstance(record, dict):
      raise fits.FitError(f"{where} is not a JSON object: remove that line")
    for field in _FIELDS:
      value = record.get(field)
      if field not in record:
        raise fits.FitError(f"{where} lacks {field!r}: remove that line, or run the sweep "
                            "again (without --fit-only) to measure the point")
      if isinstance(value, bool) or not isinstance(value, (int, float)) or \
          not np.isfinite(value) or value <= 0:
        raise fits.FitError(f"{where} has {field}={value!r}, not a positive finite number "
                            "(a diverged or hand-edited point): remove that line, or train the "
                            "point again")


def analyse(records, *, holdout: float | None = None, extrapolate: float | None = None,
            replicates: int = 1000, seed: int = 0, chance: float | None = None) -> dict:
  """Fits `records` (sweep.jsonl lines); `holdout`: a budget left out of the fits and compared
  with their forecast. Raises FitError with the fix where the sweep cannot be fitted."""
  check_records(records)
  if replicates < 1:
    raise fits.FitError(f"replicates={replicates}: the 95% intervals need at least 1 bootstrap "
                        "replicate (--replicates, 1000 by default)")
  groups = fits.group_by_budget(records)
  held = None
  if holdout is not None:
    held = min(groups, key=lambda b: abs(np.log(b / holdout)))
    if abs(np.log(held / holdout)) > 0.01:
      raise fits.FitError(f"no budget {holdout:.3g} in the sweep to hold out; it has "
                          f"{', '.join(f'{b:.3g}' for b in groups)}")
  fitted = {b: rs for b, rs in groups.items() if b != held}
  if len(fitted) < 2:
    raise fits.FitError(f"{len(fitted)} budget(s) to fit (after holding out {held}); a power "
                        "law needs at least 2: run more budgets (--budgets)")
  minima = fits.minima(fitted)
  laws = fits._laws(minima)
  targets = tuple(b for b in (held, extrapolate) if b is not None)
  boot = fits.bootstrap(fitted, replicates, seed, at=targets)
  out = {"params_count": PARAMS_COUNT, "budgets": list(fitted), **laws}
  for key in ("tokens_A", "tokens_alpha", "params_A", "params_alpha", "loss_A", "loss_alpha"):
    out[f"{key}_95"] = fits.interval(boot[key])
  out["bootstrap"] = {"replicates": replicates, "dropped": boot["dropped"], "seed": seed}
  tokens_95 = fits.interval(boot["minima_tokens"])
  params_95 = fits.interval(boot["minima_params"])
  loss_95 = fits.interval(boot["minima_loss"])
  out["minima"] = [{"budget": m.budget, "tokens": m.tokens, "params": m.params, "loss": m.loss,
                    "tokens_95": [tokens_95[0][i], tokens_95[1][i]],
                    "params_95": [params_95[0][i], params_95[1][i]],
                    "loss_95": [loss_95[0][i], loss_95[1][i]], "coeffs": m.coeffs}
                   for i, m in enumerate(minima)]
  fitted_records = [r for rs in fitted.values() for r in rs]
  if len(fitted_records) >= 5:
    out["approach3"] = fits.approach3([r["params"] for r in fitted_records],
                                      [r["tokens"] for r in fitted_records],
                                      [r["loss"] for r in fitted_records])
  for name, budget in (("holdout", held), ("extrapolation", extrapolate)):
    if budget is None:
      continue
    key = f"{budget:.3g}"
    out[name] = {"budget": budget,
                 "predicted": {"tokens": laws["tokens_A"] * budget**laws["tokens_alpha"],
                               "params": laws["params_A"] * budget**laws["params_alpha"],
                               "loss": laws["loss_A"] * budget**laws["loss_alpha"],
                               "tokens_95": fits.interval(boot[f"tokens_at_{key}"]),
                               "params_95": fits.interval(boot[f"params_at_{key}"]),
                               "loss_95": fits.interval(boot[f"loss_at_{key}"])}}
  if held is not None:
    out["holdout"]["measured"] = _measured(held, groups[held])
  out["forecast"] = _forecast(fitted_records, held, extrapolate, chance,
                              min(replicates, 500), seed)
  return out


def _measured(budget: float, records) -> dict:
  """The held-out budget's own optimum: its parabola, or its best point where that fails."""
  best = min(records, key=lambda r: r["loss"])
  measured = {"best_point": {k: best.get(k) for k in ("name", "params", "tokens", "loss")}}
  try:
    m = fits.isoflop_minimum(budget, [r["tokens"] for r in records],
                             [r["params"] for r in records], [r["loss"] for r in records])
    measured.update(tokens=m.tokens, params=m.params, loss=m.loss, coeffs=m.coeffs)
  except fits.FitError as error:
    measured.update(tokens=best["tokens"], params=best["params"], loss=best["loss"],
                    note=f"its parabola could not be used ({error}); the best point instead")
  if best.get("accuracy") is not None:
    measured["accuracy"] = best["accuracy"]
    measured["nll_per_char"] = best.get("nll_per_char")
  return measured


def _forecast(fitted_records, held, extrapolate, chance, replicates, seed) -> dict:
  usable = [r for r in fitted_records if r.get("accuracy") is not None]
  if not usable or chance is None:
    return {"status": "not measured: the sweep has no nll_per_char / accuracy columns (a run "
                      "without --fit-only measures them on every trained point)"}
  try:
    fc = forecast.two_step(usable, chance=chance, replicates=replicates, seed=seed)
  except fits.FitError as error:
    return {"status": f"not fitted: {error}"}
  out = {"status": "fitted", "nll_A": fc.nll_A, "nll_alpha": fc.nll_alpha, "mid": fc.mid,
         "scale": fc.scale, "chance": fc.chance, "replicates": len(fc.replicates)}
  for name, budget in (("holdout", held), ("extrapolation", extrapolate)):
    if budget is not None:
      out[name] = {"budget": budget, "nll": float(fc.nll_at(budget)),
                   "accuracy": float(fc.accuracy_at(budget)), **fc.interval_at(budget)}
  return out
