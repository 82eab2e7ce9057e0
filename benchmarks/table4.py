"""Llama 3's Table 4 predicted by the planner, and how the prediction moves with its constants.

    python -m benchmarks.table4              # arithmetic only: under a second, no devices

1. The three 405B rows of Table 4 (llama3_jax/planner/table4.py says how each is planned):
   predicted per-GPU memory, TFLOP/s and MFU against the published ones.
2. Sensitivity: the same rows with COMPUTE_EFFICIENCY, ATTENTION_EFFICIENCY and
   LINK_EFFICIENCY each moved (one at a time), so the reader sees what the free constants buy.
"""

import importlib

from llama3_jax.planner import table4

# The module (the package exports the function of the same name).
step_time = importlib.import_module("llama3_jax.planner.step_time")


def rows_with(**constants):
  saved = {name: getattr(step_time, name) for name in constants}
  for name, value in constants.items():
    setattr(step_time, name, value)
  try:
    return [table4.predict(row).time["mfu"] for row in table4.ROWS]
  finally:
    for name, value in saved.items():
      setattr(step_time, name, value)


def main():
  print(table4.markdown())
  print()
  print("| constants | MFU row 1 | row 2 | row 3 |")
  print("|---|---|---|---|")
  print("| published | 43% | 41% | 38% |")
  cases = [{}, {"COMPUTE_EFFICIENCY": 0.45}, {"COMPUTE_EFFICIENCY": 0.55},
           {"ATTENTION_EFFICIENCY": 1.0}, {"LINK_EFFICIENCY": 1.0}, {"TP_OVERLAP": 0.5}]
  for case in cases:
    name = ", ".join(f"{k}={v}" for k, v in case.items()) or "as shipped"
    print(f"| {name} | " + " | ".join(f"{m:.1%}" for m in rows_with(**case)) + " |")


if __name__ == "__main__":
  main()
