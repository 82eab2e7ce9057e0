"""Speed of `python -m experiments.pretrain` on the peers' reference tiny config.

    python -m benchmarks.pretrain_speed

Config (as measured for MaxText 0.2.5 in ../shared/ANCHORS.md): d_model 256, 4 layers, 4 heads,
2 KV heads, FFN 512, vocab 32,000, sequence 256, global batch 8, fsdp 8, fp32, 8 fake CPU
devices. Prints the median step time, tokens/s, the time from launch to the end of the first
step, and the share of this machine's fp32 matmul peak (measured in the same run).
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = [
    "--config.model.d_model=256", "--config.model.n_layers=4", "--config.model.n_heads=4",
    "--config.model.n_kv_heads=2", "--config.model.head_dim=64", "--config.model.ffn_dim=512",
    "--config.model.vocab_size=32000", "--config.mesh.fsdp=8", "--config.mesh.tensor=1",
    "--config.train.stages=((None, 2048, 256),)", "--config.train.warmup_tokens=2048",
    "--config.train.anneal_tokens=0", "--config.log.every_steps=1",
    "--config.checkpoint.every_steps=100000", "--config.data.synthetic=True", *sys.argv[1:],
]
MAXTEXT = {"share_of_peak": 0.76, "step_s": 1.37, "first_step_s": 12.0}


def main(steps: int = 15):
  with tempfile.TemporaryDirectory() as workdir:
    start = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.pretrain", *OVERRIDES,
         f"--config.train.steps={steps}", f"--workdir={workdir}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    metrics = pathlib.Path(workdir) / "metrics.jsonl"
    first_step = None
    while process.poll() is None:
      if first_step is None and metrics.exists() and metrics.read_text().strip():
        first_step = time.time() - start
      time.sleep(0.05)
    output = process.stdout.read()
    if process.returncode:
      raise SystemExit(output)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  steady = rows[2:]   # the first steps include compilation
  step_s = float(np.median([r["step_time_s"] for r in steady]))
  tokens_per_s = float(np.median([r["tokens_per_s"] for r in steady]))
  share = float(np.median([r["mfu"] for r in steady]))
  print("| | llama3_jax | MaxText 0.2.5 (ANCHORS.md) |")
  print("|---|---|---|")
  print(f"| median step time | {step_s:.3f} s | {MAXTEXT['step_s']} s |")
  print(f"| tokens/s | {tokens_per_s:,.0f} | ~1,490 |")
  print(f"| launch to end of first step | {first_step:.1f} s | ~{MAXTEXT['first_step_s']:.0f} s |")
  print(f"| share of fp32 matmul peak | {share:.1%} | {MAXTEXT['share_of_peak']:.0%} |")
  print(f"ratio to MaxText: step time x{step_s / MAXTEXT['step_s']:.2f}, share of peak "
        f"x{share / MAXTEXT['share_of_peak']:.2f}")


if __name__ == "__main__":
  main()
