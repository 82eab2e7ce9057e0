"""Llama 3's Table 4 (report §3.3.2) and the planner's prediction of each row.

    python -m llama3_jax.planner.table4      # the markdown table in BENCHMARKS.md

Each row is planned as Llama 3 ran it: the 405B model in bf16 with fp32 masters, Llama 3's
FSDP mode over the DP ranks (bf16 weights gathered once per step, fp32 gradients
reduce-scattered once), interleaved 1F1B over 16 stages with one sequence per micro-batch (M =
the sequences per DP group), tensor parallelism with sequence parallelism, no matmul
recomputed (remat "minimal"), a flash-style attention kernel, on H100s. The interleaving V is
not in the report: the planner takes the best V the stages' layers allow, the same rule for
every row. The third row prints DP = 4; only DP = 8 gives 16,384 GPUs (8 x 16 x 16 x 8) and
16M tokens (8 x 16 x 131,072), so it is planned with 8.
"""

from typing import NamedTuple

from llama3_jax.model import SIZES
from llama3_jax.planner.hardware import get_hardware
from llama3_jax.planner.layout import Layout
from llama3_jax.planner.memory import gib
from llama3_jax.planner.search import evaluate

BATCH_TOKENS = 16 * 2**20


class Row(NamedTuple):
  gpus: int
  sizes: dict
  seq_len: int
  seqs_per_group: int
  tflops: float        # published TFLOP/s per GPU
  mfu: float           # published BF16 MFU


ROWS = (
    Row(8192, {"tensor": 8, "stage": 16, "fsdp": 64}, 8192, 32, 430, 0.43),
    Row(16384, {"tensor": 8, "stage": 16, "fsdp": 128}, 8192, 16, 400, 0.41),
    Row(16384, {"tensor": 8, "context": 16, "stage": 16, "fsdp": 8}, 131072, 16, 380, 0.38),
)


def model():
  return SIZES["llama3-405b"].replace(dtype="bfloat16", attention="blockwise")


def predict(row: Row, hw_name: str = "h100"):
  """The planner's best result for the row's mesh (the best V among those that fit)."""
  hw = get_hardware(hw_name)
  results = [evaluate(model(), Layout(row.sizes, row.seq_len, BATCH_TOKENS,
                                      micro_batches=row.seqs_per_group, repeats=v,
                                      remat="minimal", gather_dtype="bfloat16"), hw, row.gpus)
             for v in range(1, 8)]
  return max(results, key=lambda r: (r.fits, r.time["mfu"] if r.time else 0))


def markdown() -> str:
  lines = ["| GPUs | TP | CP | PP | DP | seq | V (planner) | GiB/GPU | TFLOP/s predicted | "
           "published | MFU predicted | published |", "|" + "---|" * 12]
  for row in ROWS:
    r = predict(row)
    s = row.sizes
    lines.append(f"| {row.gpus:,} | {s.get('tensor', 1)} | {s.get('context', 1)} | "
                 f"{s['stage']} | {s['fsdp']} | {row.seq_len:,} | {r.layout.repeats} | "
                 f"{gib(r.memory['total']):.1f} | {r.time['tflops_per_gpu']:.0f} | "
                 f"{row.tflops:.0f} | {r.time['mfu']:.1%} | {row.mfu:.0%} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(markdown())
