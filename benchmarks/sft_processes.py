"""SFT speed on one process x 8 devices against the same job as 2 processes x 4 devices.

    python -m benchmarks.sft_processes                # 30 steps each, A B A B
    python -m benchmarks.sft_processes --steps 60 --rounds 1

Runs `python -m experiments.sft` with the shipped SFT config (the debug model, rows of 128
tokens, 16 rows per step, fsdp 4 x tensor 2) on the shipped task's conversations, from a
2-step pre-training run of the debug model made first (SFT's speed does not depend on the
weights), once as one process with 8 CPU devices and once under `launch.local --processes 2
--devices-per-process 4`, alternating, and prints the median tokens/s of the steps after the
first two (compilation), the wall time of each launch, and the ratio 2x4 / 1x8.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(command: list[str], env: dict) -> None:
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  if done.returncode:
    raise SystemExit((done.stdout + done.stderr)[-3000:])


def sft(processes: int, start: pathlib.Path, data: pathlib.Path, workdir: pathlib.Path,
        steps: int, env: dict) -> dict:
  command = [sys.executable, "-m", "experiments.sft", f"--config.init.path={start}",
             f"--config.data.path={data}", f"--workdir={workdir}",
             f"--config.train.steps={steps}", "--config.log.every_steps=1",
             "--config.checkpoint.every_steps=100000"]
  if processes > 1:
    command = [sys.executable, "-m", "launch.local", "--processes", str(processes),
               "--devices", "8", "--max-restarts", "0", "--", *command]
  began = time.time()
  run(command, env)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {"tokens_per_s": float(np.median([r["tokens_per_s"] for r in rows[2:]])),
          "wall_s": time.time() - began}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args(argv)
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    run([sys.executable, "-m", "experiments.pretrain", f"--workdir={tmp / 'start'}",
         "--config.train.steps=2", "--config.eval.every_steps=0"], env)
    from llama3_jax.posttrain import task
    data = task.write_task(tmp / "task")["sft"]
    results = {1: [], 2: []}
    for r in range(args.rounds):
      for processes in (1, 2):
        results[processes].append(sft(processes, tmp / "start", data,
                                      tmp / f"sft_{processes}_{r}", args.steps, env))
  one = np.median([x["tokens_per_s"] for x in results[1]])
  two = np.median([x["tokens_per_s"] for x in results[2]])
  print(f"SFT of the debug model (shipped sft config: fsdp 4 x tensor 2, 16 x 128 tokens per "
        f"step), {args.steps} steps, median of {args.rounds} launches each, A B A B:")
  print("| layout | tokens/s (median of steps 3..) | launch to end, s |")
  print("|---|---|---|")
  for processes, label in ((1, "1 process x 8 devices"), (2, "2 processes x 4 devices")):
    runs = results[processes]
    each = ", ".join(f"{x['tokens_per_s']:,.0f}" for x in runs)
    print(f"| {label} | {np.median([x['tokens_per_s'] for x in runs]):,.0f} ({each}) | "
          f"{np.median([x['wall_s'] for x in runs]):.0f} |")
  print(f"ratio 2x4 / 1x8: {two / one:.2f}")


if __name__ == "__main__":
  main()
