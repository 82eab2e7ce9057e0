"""The sweep's figures, like the Llama 3 report's Figures 2, 3 and 4 (PNG, matplotlib Agg).

    write_plots(records, result, out_dir)   # isoflops.png, power_law.png, forecast.png

isoflops.png: held-out loss against training tokens per budget, the fitted parabolas and their
minima (Figure 2); the held-out budget drawn hollow. power_law.png: the compute-optimal tokens
and parameters against FLOPs, the fitted power laws with their 95% band, the held-out budget's
prediction and measurement (Figure 3). forecast.png: NLL per character of the correct answer
against FLOPs, and accuracy against that NLL (Figure 4), where the sweep has those columns.
"""

import pathlib

import numpy as np

from llama3_jax.scaling.fit import group_by_budget


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt


def isoflops(records, result, path) -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  groups = group_by_budget(records)
  colors = plt.cm.viridis(np.linspace(0, 0.9, len(groups)))
  minima = {m["budget"]: m for m in result["minima"]}
  held = result.get("holdout", {}).get("budget")
  for color, (budget, rs) in zip(colors, groups.items()):
    tokens = np.array([r["tokens"] for r in rs], float)
    losses = np.array([r["loss"] for r in rs], float)
    hollow = budget == held
    ax.scatter(tokens, losses, color=color, facecolors="none" if hollow else color,
               label=f"{budget:.2g} FLOPs" + (" (held out)" if hollow else ""), zorder=3)
    coeffs = minima[budget]["coeffs"] if budget in minima else (
        result["holdout"]["measured"].get("coeffs") if hollow else None)
    if coeffs:
      x = np.linspace(np.log10(tokens.min()) - 0.1, np.log10(tokens.max()) + 0.1, 100)
      ax.plot(10**x, np.polyval(coeffs, x), color=color, ls="--" if hollow else "-")
    if budget in minima:
      ax.scatter([minima[budget]["tokens"]], [minima[budget]["loss"]], color=color, marker="*",
                 s=160, edgecolors="k", zorder=4)
  ax.set_xscale("log")
  ax.set_xlabel("training tokens")
  ax.set_ylabel("held-out loss (nats / token)")
  ax.set_title("IsoFLOP curves and their minima (cf. Llama 3 Figure 2)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def power_law(result, path) -> None:
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  budgets = np.array([m["budget"] for m in result["minima"]])
  extra = [result[k]["budget"] for k in ("holdout", "extrapolation") if k in result]
  grid = np.geomspace(budgets.min() / 1.5, max([budgets.max()] + extra) * 1.5, 100)
  for ax, what in zip(axes, ("tokens", "params")):
    values = np.array([m[what] for m in result["minima"]])
    low = np.array([m[f"{what}_95"][0] for m in result["minima"]])
    high = np.array([m[f"{what}_95"][1] for m in result["minima"]])
    # A bootstrap interval may miss its estimate by rounding (a noise-free sweep): no negative bar.
    ax.errorbar(budgets, values, yerr=np.maximum([values - low, high - values], 0), fmt="o",
                color="C0", capsize=3, label="IsoFLOP minima (95%)")
    a, alpha = result[f"{what}_A"], result[f"{what}_alpha"]
    ax.plot(grid, a * grid**alpha, color="C0",
            label=f"{'D' if what == 'tokens' else 'N'}*(C) = {a:.3g} C^{alpha:.3f}")
    a_lo, a_hi = result[f"{what}_alpha_95"]
    ax.fill_between(grid, *_band(result, what, grid), color="C0", alpha=0.15,
                    label=f"95%: alpha in [{a_lo:.3f}, {a_hi:.3f}]")
    for key, color, label in (("holdout", "C1", "held-out budget: predicted"),
                              ("extrapolation", "C2", "extrapolation")):
      if key in result:
        h = result[key]
        pred = h["predicted"]
        ax.errorbar([h["budget"]], [pred[what]],
                    yerr=np.maximum([[pred[what] - pred[f"{what}_95"][0]],
                                     [pred[f"{what}_95"][1] - pred[what]]], 0),
                    fmt="s", color=color, capsize=3, label=f"{label} (95%)")
    if "holdout" in result:
      ax.scatter([result["holdout"]["budget"]], [result["holdout"]["measured"][what]],
                 marker="*", s=160, color="C3", zorder=4, label="held-out budget: measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute budget C (FLOPs)")
    ax.set_ylabel("compute-optimal " + ("training tokens D*" if what == "tokens"
                                        else "parameters N*"))
    ax.legend(fontsize=7)
  fig.suptitle("Compute-optimal tokens and parameters (cf. Llama 3 Figure 3)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _band(result, what, grid):
  """The 95% band of the power law: percentiles over the bootstrap's lines (approximated from
  the exponent's and prefactor's intervals, paired at the fit's pivot)."""
  budgets = np.array([m["budget"] for m in result["minima"]])
  pivot = np.exp(np.log(budgets).mean())
  a, alpha = result[f"{what}_A"], result[f"{what}_alpha"]
  at_pivot = a * pivot**alpha
  lines = [at_pivot * (grid / pivot)**s for s in result[f"{what}_alpha_95"]]
  return np.minimum(*lines), np.maximum(*lines)


def forecast_plot(records, result, path) -> bool:
  fc = result.get("forecast", {})
  if fc.get("status") != "fitted":
    return False
  from llama3_jax.scaling.forecast import compute_optimal, sigmoid
  plt = _pyplot()
  usable = [r for r in records if r.get("accuracy") is not None]
  held = result.get("holdout", {}).get("budget")
  optimal = compute_optimal([r for r in usable if r["budget"] != held])   # what step 1 fitted
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
  flops = np.array([r["flops"] for r in optimal])
  left.scatter(flops, [r["nll_per_char"] for r in optimal], color="C0",
               label="compute-optimal models")
  held_best = compute_optimal([r for r in usable if r["budget"] == held])
  if held_best:
    left.scatter([held_best[0]["flops"]], [held_best[0]["nll_per_char"]], marker="*", s=160,
                 color="C3", zorder=4, label="held-out budget: measured")
  grid = np.geomspace(flops.min() / 1.5, max(flops.max(), *[fc[k]["budget"] for k in
                                                              ("holdout", "extrapolation")
                                                              if k in fc]) * 1.5, 100)
  left.plot(grid, fc["nll_A"] * grid**fc["nll_alpha"], color="C0",
            label=f"{fc['nll_A']:.3g} C^{fc['nll_alpha']:.3f}")
  left.set_xscale("log")
  left.set_xlabel("training FLOPs")
  left.set_ylabel("NLL of the correct answer per character")
  nll = np.array([r["nll_per_char"] for r in usable])
  right.scatter(nll, [r["accuracy"] for r in usable], color="C0", label="sweep models")
  x = np.linspace(nll.min() - 0.2 * np.ptp(nll) - 1e-3, nll.max() + 0.2 * np.ptp(nll) + 1e-3, 100)
  right.plot(x, sigmoid(x, fc["mid"], fc["scale"], fc["chance"]), color="C0", label="sigmoid")
  for key, color in (("holdout", "C1"), ("extrapolation", "C2")):
    if key in fc:
      left.scatter([fc[key]["budget"]], [fc[key]["nll"]], marker="s", color=color,
                   label=f"{key} forecast")
      right.scatter([fc[key]["nll"]], [fc[key]["accuracy"]], marker="s", color=color,
                    label=f"{key} forecast")
  measured = result.get("holdout", {}).get("measured", {})
  if measured.get("accuracy") is not None:
    right.scatter([measured["nll_per_char"]], [measured["accuracy"]], marker="*", s=160,
                  color="C3", label="held-out budget: measured")
  right.set_xlabel("NLL of the correct answer per character")
  right.set_ylabel("accuracy")
  left.legend(fontsize=7)
  right.legend(fontsize=7)
  fig.suptitle("Two-step forecast of downstream accuracy (cf. Llama 3 Figure 4)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_plots(records, result, out_dir) -> list[pathlib.Path]:
  out_dir = pathlib.Path(out_dir)
  paths = [out_dir / "isoflops.png", out_dir / "power_law.png"]
  isoflops(records, result, paths[0])
  power_law(result, paths[1])
  if forecast_plot(records, result, out_dir / "forecast.png"):
    paths.append(out_dir / "forecast.png")
  return paths
