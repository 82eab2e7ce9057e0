"""Speed of `python -m experiments.pretrain` on the peers' reference tiny config.

    python -m benchmarks.pretrain_speed

Config (as measured for MaxText 0.2.5 in ../shared/ANCHORS.md): d_model 256, 4 layers, 4 heads,
2 KV heads, FFN 512, vocab 32,000, sequence 256, global batch 8, fsdp 8, fp32, 8 fake CPU
devices. Prints the median step time, tokens/s, the time from launch to the end of the first
step, and the share of this machine's fp32 matmul peak (measured in the same run), for three
launches: cold (an empty compilation cache), warm (the same launch again: JAX's persistent
compilation cache, on by default in the launcher, skips compiling), and warm with the embedding
and head split by d_model (`sharding.vocab_over_fsdp=False`; "auto" splits them by vocabulary
on this config) as the baseline of the same run. The MaxText figures here are ANCHORS.md's, from
another hour of this machine; benchmarks/peers.py measures both side by side.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from llama3_jax.model import ModelConfig
from llama3_jax.model.flops import flops_per_token
from llama3_jax.train.metrics import measure_matmul_peak

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = [
    "--config.model.d_model=256", "--config.model.n_layers=4", "--config.model.n_heads=4",
    "--config.model.n_kv_heads=2", "--config.model.head_dim=64", "--config.model.ffn_dim=512",
    "--config.model.vocab_size=32000", "--config.mesh.fsdp=8", "--config.mesh.tensor=1",
    "--config.train.stages=({'until_tokens': None, 'batch_tokens': 2048, 'seq_len': 256},)",
    "--config.train.warmup_tokens=2048",
    "--config.train.anneal_tokens=0", "--config.log.every_steps=1",
    "--config.checkpoint.every_steps=100000", "--config.data.synthetic=True", *sys.argv[1:],
]
MAXTEXT = {"share_of_peak": 0.76, "step_s": 1.37, "first_step_s": 12.0}


def launch(steps: int, cache: str, *extra: str) -> dict:
  """One launch of the pretrain command; its median step time, tokens/s, share of peak."""
  with tempfile.TemporaryDirectory() as workdir:
    start = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.pretrain", *OVERRIDES, *extra,
         f"--config.train.steps={steps}", f"--workdir={workdir}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": cache},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
  return {"step_s": float(np.median([r["step_time_s"] for r in steady])),
          "tokens_per_s": float(np.median([r["tokens_per_s"] for r in steady])),
          "first_step_s": first_step}


def main(steps: int = 15):
  with tempfile.TemporaryDirectory() as cache:
    runs = {"cold": launch(steps, cache), "warm": launch(steps, cache),
            "d_model split": launch(steps, cache, "--config.sharding.vocab_over_fsdp=False")}
  # The peak of this run, measured here (the launcher keeps the highest it has seen).
  peak = measure_matmul_peak()
  model = ModelConfig(vocab_size=32000, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
                      head_dim=64, ffn_dim=512)
  for r in runs.values():
    r["share"] = flops_per_token(model, 256) * r["tokens_per_s"] / peak
  print(f"fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s")
  print("| | llama3_jax, cold cache | llama3_jax, warm cache | tables split by d_model (a new "
        "program: cold) | MaxText 0.2.5 (ANCHORS.md) |")
  print("|---|---|---|---|---|")
  row = lambda name, key, fmt: " | ".join([name] + [format(r[key], fmt) for r in runs.values()])
  print(f"| {row('median step time (s)', 'step_s', '.3f')} | {MAXTEXT['step_s']} |")
  print(f"| {row('tokens/s', 'tokens_per_s', ',.0f')} | ~1,490 |")
  print(f"| {row('launch to end of first step (s)', 'first_step_s', '.1f')} | "
        f"~{MAXTEXT['first_step_s']:.0f} |")
  print(f"| {row('share of fp32 matmul peak', 'share', '.1%')} | {MAXTEXT['share_of_peak']:.0%} |")
  warm, base = runs["warm"], runs["d_model split"]
  print(f"vocab split / d_model split: step time x{warm['step_s'] / base['step_s']:.2f}; "
        f"ratio to MaxText: step time x{warm['step_s'] / MAXTEXT['step_s']:.2f}, share of peak "
        f"x{warm['share'] / MAXTEXT['share_of_peak']:.2f}, first step (warm) "
        f"x{warm['first_step_s'] / MAXTEXT['first_step_s']:.2f}")


if __name__ == "__main__":
  main()
