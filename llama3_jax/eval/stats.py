"""Scores with their 95% intervals: the one place evaluation and post-training compute them.

    interval(0.62, 200)                    # half-width of the 95% interval (report §5.1.1)
    exact_match([True, False, True])       # {"exact_match": ..., "exact_match_ci": ..., "n": 3}
"""

import math


def interval(score: float, n: int) -> float:
  """Half-width of the 95% interval of a score (a proportion) over n examples, as the Llama 3
  report gives its benchmark intervals (§5.1.1): 1.96 * sqrt(p (1 - p) / n)."""
  return 1.96 * math.sqrt(score * (1 - score) / n) if n else float("nan")


def exact_match(correct) -> dict:
  """The share of answers equal to the gold, its interval and the count."""
  correct = [bool(c) for c in correct]
  score = sum(correct) / len(correct) if correct else float("nan")
  return {"exact_match": score, "exact_match_ci": interval(score, len(correct)),
          "n": len(correct)}
