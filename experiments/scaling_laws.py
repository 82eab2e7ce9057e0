"""Scaling laws end to end (Llama 3 report §3.2.1): an IsoFLOP sweep, its fits, a forecast.

python -m experiments.scaling_laws                             # default sweep: 15 points
python -m experiments.scaling_laws --workdir W --budgets 2.5e11,5e11,1e12 --sizes 5
python -m experiments.scaling_laws --workdir W --fit-only      # refit W/sweep.jsonl, no training
python -m experiments.scaling_laws --fit-only --sweep FILE --workdir OUT

Trains every point of the grid (budgets x model sizes, llama3_jax/scaling/sweep.py) through the
pre-training loop in W/points/<name>/, one after another, appending one line per finished point
to W/sweep.jsonl; run it again after a kill and it resumes (finished points are never rerun;
SIGTERM or Ctrl-C checkpoints the point in training and exits 0). Each point's model is also
scored on an arithmetic multiple-choice task (accuracy and the correct answers' NLL per
character, llama3_jax/eval/multiple_choice.py) for the report's two-step forecast. Then fits
(llama3_jax/scaling/analysis.py): a parabola per budget, the power laws D*(C) and N*(C) with
bootstrap 95% intervals, Chinchilla's approach 3 as a cross-check; the largest budget is held
out (--holdout) and its optimal loss, tokens and parameters are forecast from the others and
compared with its measurement. Writes W/fit.json, W/isoflops.png, W/power_law.png (and
W/forecast.png, fitted on the task's columns). Under launch.local, SLURM or Kubernetes every
process runs this same command: the points train on all of the job's devices, process 0 writes
the records, the fits and the figures. Exit codes: 0 done (or stopped by SIGTERM / Ctrl-C), 2
bad input (a message `error: <what>: <fix>`).
"""

import json
import logging
import pathlib
import sys

DEFAULT_BUDGETS = "2e11,4e11,8e11"


def _fail(what: str, fix: str = "") -> None:
  """Bad input: one line, exit 2 (llama3_jax/cli.py)."""
  from llama3_jax.errors import UserError
  raise UserError(what, fix)


def parse(argv):
  from llama3_jax import cli
  p = cli.ArgumentParser(prog="python -m experiments.scaling_laws",
                         description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="workdirs/scaling_laws",
                 help="sweep points, sweep.jsonl, fit.json and the figures")
  p.add_argument("--fit-only", action="store_true", help="refit the sweep without training")
  p.add_argument("--sweep", help="with --fit-only: the sweep.jsonl to fit (default: WORKDIR's)")
  p.add_argument("--budgets", default=DEFAULT_BUDGETS, help="comma-separated FLOPs budgets")
  p.add_argument("--sizes", type=int, default=5, help="model sizes per budget")
  p.add_argument("--spread", type=float, default=2.5,
                 help="sizes span the expected optimum / spread .. * spread")
  p.add_argument("--holdout", default="largest",
                 help="budget left out of the fits and forecast: 'largest', a number or 'none'")
  p.add_argument("--extrapolate", type=float, default=1e13, help="a budget to extrapolate to")
  p.add_argument("--chance", type=float, default=0.25,
                 help="the multiple-choice task's chance accuracy (two-step forecast)")
  p.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
  p.add_argument("--seed", type=int, default=0)

  args = p.parse_args(argv)
  from llama3_jax.errors import at_least
  at_least(args.replicates, 1, "--replicates", "give bootstrap replicates >= 1 (1000 by default)")
  return args


def _budgets(text: str) -> list[float]:
  try:
    budgets = sorted({float(b) for b in text.split(",") if b.strip()})
  except ValueError:
    _fail(f"--budgets={text!r} is not a list of numbers", "write e.g. --budgets 2.5e11,5e11,1e12")
  if not budgets or min(budgets) <= 0:
    _fail(f"--budgets={text!r}", "give positive FLOPs budgets")
  return budgets


def _holdout(text: str, budgets: list[float]) -> float | None:
  if text == "none":
    return None
  if text == "largest":
    return budgets[-1] if len(budgets) >= 3 else None
  try:
    return float(text)
  except ValueError:
    _fail(f"--holdout={text!r}", "use 'largest', 'none' or one of the budgets")


def train_sweep(args, workdir: pathlib.Path) -> None:
  from experiments._defaults import start_job
  start_job(cpu_devices=1)   # one CPU device for tiny models, unless the job says otherwise
  import jax
  from llama3_jax.scaling import sweep
  try:
    points = sweep.plan_sweep(_budgets(args.budgets), args.sizes, args.spread)
  except ValueError as error:
    _fail(str(error))
  peak = None
  if jax.devices()[0].platform == "cpu":   # measured once for all points (MFU in metrics)
    from llama3_jax.data.corpus import cache_dir
    from llama3_jax.train.metrics import measured_cpu_peak
    peak = measured_cpu_peak(cache_dir() / "peak_flops.json")
  total = sum(p.flops for p in points)
  print(f"sweep: {len(points)} points over {len(set(p.budget for p in points))} budgets, "
        f"{total:.3g} FLOPs in all; points in {workdir / 'points'}", flush=True)
  try:
    sweep.run_sweep(points, workdir, seed=args.seed, peak_flops=peak)
  except sweep.SweepStopped as stopped:
    print(f"sweep: {stopped}")
    sys.exit(0)
  sweep.add_task_columns(workdir)   # points trained before the task columns existed
  return {p.name for p in points}


def fit_and_plot(args, sweep_file: pathlib.Path, workdir: pathlib.Path, names=None) -> dict:
  """Fits the sweep's records (`names`: only those points, e.g. the grid just run)."""
  from llama3_jax.scaling import analysis, plots
  from llama3_jax.scaling.fit import FitError
  from llama3_jax.scaling.sweep import read_records
  records = [r for r in read_records(sweep_file) if names is None or r["name"] in names]
  if not records:
    _fail(f"{sweep_file} has no sweep points", "run the sweep first (without --fit-only) or "
          "give --sweep FILE")
  try:
    analysis.check_records(records)   # a record without a loss, a NaN: named, not a traceback
    holdout = _holdout(args.holdout, sorted({float(r["budget"]) for r in records}))
    result = analysis.analyse(records, holdout=holdout, extrapolate=args.extrapolate,
                              replicates=args.replicates, seed=args.seed, chance=args.chance)
  except FitError as error:
    _fail(f"cannot fit {sweep_file}", str(error))
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "fit.json").write_text(json.dumps(result, indent=1))
  figures = plots.write_plots(records, result, workdir)
  print(summary(result))
  print(f"outputs: {workdir / 'fit.json'}, " + ", ".join(str(p) for p in figures))
  return result


def summary(r: dict) -> str:
  def ci(pair, fmt):
    return f"[{format(pair[0], fmt)}, {format(pair[1], fmt)}]"

  lines = ["IsoFLOP minima (95% bootstrap intervals):"]
  for m in r["minima"]:
    lines.append(f"  C={m['budget']:.3g}: D*={m['tokens']:.3g} {ci(m['tokens_95'], '.3g')}, "
                 f"N*={m['params']:.3g} {ci(m['params_95'], '.3g')}, "
                 f"loss {m['loss']:.4f} {ci(m['loss_95'], '.4f')}")
  lines.append(f"D*(C) = {r['tokens_A']:.3g} C^{r['tokens_alpha']:.3f}  (alpha 95% "
               f"{ci(r['tokens_alpha_95'], '.3f')}, A {ci(r['tokens_A_95'], '.3g')})")
  lines.append(f"N*(C) = {r['params_A']:.3g} C^{r['params_alpha']:.3f}  (alpha 95% "
               f"{ci(r['params_alpha_95'], '.3f')}); N = {r['params_count'].split(':')[0]}")
  if "approach3" in r:
    a3 = r["approach3"]
    lines.append(f"approach 3: L = {a3['E']:.3f} + {a3['A']:.3g}/N^{a3['a']:.3f} + "
                 f"{a3['B']:.3g}/D^{a3['b']:.3f}: N* ~ C^{a3['params_alpha']:.3f}, "
                 f"D* ~ C^{a3['tokens_alpha']:.3f}")
  for key in ("holdout", "extrapolation"):
    if key in r:
      h, p = r[key], r[key]["predicted"]
      line = (f"{key} C={h['budget']:.3g}: predicted loss {p['loss']:.4f} "
              f"{ci(p['loss_95'], '.4f')}, D* {p['tokens']:.3g} {ci(p['tokens_95'], '.3g')}, "
              f"N* {p['params']:.3g} {ci(p['params_95'], '.3g')}")
      if "measured" in h:
        m = h["measured"]
        line += f"; measured loss {m['loss']:.4f}, D* {m['tokens']:.3g}, N* {m['params']:.3g}"
      lines.append(line)
  lines.append(f"two-step forecast: {r['forecast']['status']}")
  return "\n".join(lines)


def main(argv):
  args = parse(argv)
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  workdir = pathlib.Path(args.workdir)
  if args.sweep and not args.fit_only:
    _fail("--sweep is for refitting", "add --fit-only (or drop --sweep to train into --workdir)")
  sweep_file = pathlib.Path(args.sweep) if args.sweep else workdir / "sweep.jsonl"
  if args.fit_only and not sweep_file.exists():
    _fail(f"{sweep_file} does not exist", "run the sweep first, or give --sweep FILE")
  # A run fits the grid it ran (the workdir may hold other budgets' points); --fit-only fits
  # every line of the file. In a multi-process job every process trains; process 0 fits.
  names = None if args.fit_only else train_sweep(args, workdir)
  from llama3_jax.runtime import job
  job.write_once("fit", lambda: fit_and_plot(args, sweep_file, workdir, names))


if __name__ == "__main__":
  from llama3_jax import cli
  cli.run(main)
