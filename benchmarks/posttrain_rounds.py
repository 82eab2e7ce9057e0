"""The README's rounds table, from a finished `python -m experiments.posttrain` run.

python -m experiments.posttrain                          # in a fresh directory, then
python -m benchmarks.posttrain_rounds workdirs/posttrain # the markdown table of that run

Reads W/summary.json (each round's reward model, rejection sampling and policy) and round 0's
SFT evaluation (W/round_0/sft/eval.json) and prints one markdown row per round: the reward
model's held-out pairwise accuracy, its within-prompt AUC on the policy's own K samples, best
of K vs a random one of the K vs any (with best - random paired by prompt, each with its 95%
interval), and the policies' held-out exact match. No figures are typed in by hand.
"""

import json
import pathlib
import sys


def rows(workdir) -> list[str]:
  workdir = pathlib.Path(workdir)
  rounds = json.loads((workdir / "summary.json").read_text())
  k = json.loads((workdir / "round_1" / "rejection" / "summary.json").read_text())[
      "settings"]["samples"]
  out = [f"| round | RM held-out pairwise acc. | RM within-prompt AUC | best of {k} correct | "
         f"random one of {k} | best - random | any of {k} | SFT exact match | "
         "policy (DPO) exact match |", "|---|---|---|---|---|---|---|---|---|"]
  sft0 = workdir / "round_0" / "sft" / "eval.json"
  if sft0.exists():
    after = json.loads(sft0.read_text())["after"]
    out.append(f"| 0 (SFT only) | | | | | | | {after['exact_match']:.3f} ± "
               f"{after['exact_match_ci']:.3f} | |")
  pm = lambda r, key: f"{r[key]:.3f} ± {r[key + '_ci']:.3f}"
  for r in rounds:
    out.append(f"| {r['round']} | {pm(r, 'rm_accuracy')} | {pm(r, 'auc')} | "
               f"**{pm(r, 'best_of_k_correct')}** | {pm(r, 'random_sample_correct')} | "
               f"{r['best_minus_random']:+.3f} ± {r['best_minus_random_ci']:.3f} | "
               f"{r['any_correct']:.3f} | {r['sft_exact_match']:.3f} | "
               f"{pm(r, 'exact_match')} |")
  return out


if __name__ == "__main__":
  print("\n".join(rows(sys.argv[1] if len(sys.argv) > 1 else "workdirs/posttrain")))
