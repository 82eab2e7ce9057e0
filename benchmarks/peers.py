"""llama3_jax and MaxText 0.2.5 side by side: the same model, mesh and dtype, interleaved runs.

    python -m benchmarks.peers                       # every layout, 3 runs each, ~30-60 min
    python -m benchmarks.peers --layouts "fsdp 8 bf16" --runs 2 --steps 8

Builds (once, then reuses) two Python 3.12 virtual environments in a cache folder outside the
repo (`$LLAMA3_PEERS_CACHE`, default ~/.cache/llama3_jax_peers): `maxtext[tpu]==0.2.5` (~2.8 GB,
a few minutes) and this repo's requirements.txt, so both run the same jax (0.12.x). Then for
each layout it launches MaxText's trainer and `python -m experiments.pretrain` alternately
(A B A B ...), each a fresh process on 8 fake CPU devices with compilation caches off and
synthetic data, on the peers' tiny Llama-3-shaped model (d_model 256, 4 layers, 4 heads, 2 KV
heads, FFN 512, vocab 32,000, sequence 256, global batch 8, ../shared/ANCHORS.md). MaxText keeps
its defaults otherwise (remat "full", AdamW, grad clipping 1.0); llama3_jax keeps its own.

Reported per run: the median step time after `--skip` warm-up steps, the time from launch to
the end of the first step, and how many cores OTHER processes kept busy meanwhile (all CPU time
in /proc/stat minus this script's children's), because on a shared machine that, not the code,
can decide a comparison. Per layout: medians over runs and the ratios llama3_jax / MaxText.
Writes the table to stdout and every number to `--out` (JSON).
"""

import argparse
import hashlib
import json
import os
import pathlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("LLAMA3_PEERS_CACHE",
                                    pathlib.Path.home() / ".cache" / "llama3_jax_peers"))
MAXTEXT = "maxtext[tpu]==0.2.5"
ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
       "DECOUPLE_GCLOUD": "TRUE", "PYTHONPATH": str(ROOT)}

# Shared shape; then per layout (our overrides, MaxText's overrides).
OURS = [
    "--config.model.d_model=256", "--config.model.n_layers=4", "--config.model.n_heads=4",
    "--config.model.n_kv_heads=2", "--config.model.head_dim=64", "--config.model.ffn_dim=512",
    "--config.model.vocab_size=32000",
    "--config.train.stages=({'until_tokens': None, 'batch_tokens': 2048, 'seq_len': 256},)",
    "--config.train.warmup_tokens=2048", "--config.train.anneal_tokens=0",
    "--config.log.every_steps=1", "--config.checkpoint.every_steps=100000",
    "--config.data.synthetic=True", "--config.runtime.compilation_cache=False",
    "--config.eval.every_steps=0",
]
THEIRS = [
    "hardware=cpu", "skip_jax_distributed_system=true", "dataset_type=synthetic",
    "enable_checkpointing=false", "base_emb_dim=256", "base_num_decoder_layers=4",
    "base_num_query_heads=4", "base_num_kv_heads=2", "base_mlp_dim=512", "head_dim=64",
    "vocab_size=32000", "max_target_length=256", "per_device_batch_size=1", "log_period=1",
    "jax_cache_dir=", "enable_tensorboard=false",
]
LAYOUTS = {
    "fsdp 8 fp32": (["--config.mesh.fsdp=8", "--config.mesh.tensor=1",
                     "--config.model.dtype=float32"],
                    ["ici_fsdp_parallelism=8", "dtype=float32"]),
    "fsdp 8 bf16": (["--config.mesh.fsdp=8", "--config.mesh.tensor=1",
                     "--config.model.dtype=bfloat16"],
                    ["ici_fsdp_parallelism=8", "dtype=bfloat16"]),
    "fsdp 4 x tensor 2 bf16": (
        ["--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.model.dtype=bfloat16"],
        ["ici_fsdp_parallelism=4", "ici_tensor_parallelism=2", "dtype=bfloat16"]),
    "pipeline 2 x fsdp 4 bf16": (
        ["--config.mesh.stage=2", "--config.mesh.fsdp=4", "--config.mesh.tensor=1",
         "--config.train.micro_batches=2",
         "--config.model.dtype=bfloat16"],
        ["ici_pipeline_parallelism=2", "ici_fsdp_parallelism=4", "num_pipeline_microbatches=2",
         "dtype=bfloat16"]),
}


def python312() -> str:
  """A Python 3.12 interpreter: on PATH, or one pyenv installed."""
  candidates = [shutil.which("python3.12") or "", *map(str, sorted(
      (pathlib.Path.home() / ".pyenv" / "versions").glob("3.12*/bin/python")))]
  for candidate in candidates:
    if candidate and subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2]"
                                     " == (3, 12)"], capture_output=True).returncode == 0:
      return candidate
  raise SystemExit("benchmarks.peers needs a Python 3.12 interpreter (MaxText 0.2.5 requires "
                   "it): install one, e.g. `pyenv install 3.12`")


def venv(name: str, *requirements: str) -> str:
  """The python of the cached venv `name` with `requirements` installed (built if missing)."""
  folder = CACHE / name
  ready = folder / "ready.json"
  # What was installed: the arguments, and the contents of any requirements file among them.
  key = [hashlib.sha256(pathlib.Path(r).read_bytes()).hexdigest() if pathlib.Path(r).is_file()
         else r for r in requirements]
  if not ready.exists() or json.loads(ready.read_text()) != key:
    shutil.rmtree(folder, ignore_errors=True)
    print(f"building {folder} ({' '.join(requirements)}) ...", flush=True)
    start = time.time()
    subprocess.run([python312(), "-m", "venv", str(folder)], check=True)
    subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", *requirements],
                   check=True)
    ready.write_text(json.dumps(key))
    print(f"built in {time.time() - start:.0f} s", flush=True)
  return str(folder / "bin" / "python")


def busy_jiffies() -> int:
  """CPU time (clock ticks) spent by every process on the machine, from /proc/stat."""
  user, nice, system, _, _, irq, softirq, steal = map(
      int, pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
  return user + nice + system + irq + softirq + steal


def children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def timed_launch(command: list[str], steps_of, workdir: pathlib.Path) -> dict:
  """Runs `command`; `steps_of(workdir, output)` -> step times so far. Returns the run's
  step times, launch-to-first-step time and the cores that other processes kept busy."""
  log = workdir / "log.txt"
  start, jiffies, own = time.time(), busy_jiffies(), children_cpu_s()
  first = None
  with open(log, "w") as out:
    process = subprocess.Popen(command, cwd=workdir, env={**os.environ, **ENV}, stdout=out,
                               stderr=subprocess.STDOUT)
    try:
      while process.poll() is None:
        if first is None and steps_of(workdir, log.read_text(errors="replace")):
          first = time.time() - start
        time.sleep(0.05)
    finally:   # interrupted: leave no trainer running
      if process.poll() is None:
        process.kill()
  wall = time.time() - start
  others = (busy_jiffies() - jiffies) / os.sysconf("SC_CLK_TCK") - (children_cpu_s() - own)
  text = log.read_text(errors="replace")
  if process.returncode:
    return {"error": text[-3000:], "wall_s": wall}
  return {"step_times_s": steps_of(workdir, text), "first_step_s": first, "wall_s": wall,
          "other_cores": max(others, 0.0) / wall, "own_cores": (children_cpu_s() - own) / wall}


def ours_steps(workdir, _text):
  metrics = workdir / "run" / "metrics.jsonl"
  if not metrics.exists():
    return []
  rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
  return [r["step_time_s"] for r in rows if "step_time_s" in r]


def theirs_steps(_workdir, text):
  return [float(s) for s in re.findall(r"completed step: \d+, seconds: ([\d.]+)", text)]


def run_ours(python, layout, steps, workdir):
  command = [python, "-m", "experiments.pretrain", *OURS, *LAYOUTS[layout][0],
             f"--config.train.steps={steps}", f"--workdir={workdir / 'run'}"]
  return timed_launch(command, ours_steps, workdir)


def run_theirs(python, layout, steps, workdir):
  config = pathlib.Path(python).parents[1] / "lib" / "python3.12" / "site-packages" / \
      "maxtext" / "configs" / "base.yml"
  command = [python, "-m", "maxtext.trainers.pre_train.train", str(config), "run_name=peers",
             f"base_output_directory={workdir / 'out'}", *THEIRS, *LAYOUTS[layout][1],
             f"steps={steps}"]
  return timed_launch(command, theirs_steps, workdir)


def summary(runs: list[dict], skip: int) -> dict:
  ok = [r for r in runs if "error" not in r and len(r["step_times_s"]) > skip]
  if not ok:
    return {"error": runs[-1].get("error", "no steps")[-500:]}
  return {"step_s": statistics.median(statistics.median(r["step_times_s"][skip:]) for r in ok),
          "first_step_s": statistics.median(r["first_step_s"] for r in ok),
          "other_cores": max(r["other_cores"] for r in ok), "runs": len(ok)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated names")
  parser.add_argument("--runs", type=int, default=3, help="runs of each system per layout")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out")
  parser.add_argument("--out", default="peers.json")
  args = parser.parse_args(argv)
  ours_python = venv("ours", "-r", str(ROOT / "requirements.txt"))
  theirs_python = venv("maxtext", MAXTEXT)
  result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
            "layouts": {}}
  for layout in args.layouts.split(","):
    runs = {"llama3_jax": [], "MaxText": []}
    for i in range(args.runs):   # A B A B: drifts of the machine hit both alike
      for name, run in (("MaxText", run_theirs), ("llama3_jax", run_ours)):
        with tempfile.TemporaryDirectory() as workdir:
          python = theirs_python if name == "MaxText" else ours_python
          r = run(python, layout, args.steps, pathlib.Path(workdir))
        runs[name].append(r)
        print(f"{layout} | {name} run {i + 1}: " + (
            "FAILED " + r["error"][-300:] if "error" in r else
            f"step {statistics.median(r['step_times_s'][args.skip:]):.3f} s, first step "
            f"{r['first_step_s']:.1f} s, other processes {r['other_cores']:.2f} cores"),
            flush=True)
    result["layouts"][layout] = {"runs": runs, **{
        name: summary(rs, args.skip) for name, rs in runs.items()}}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
  print(f"\n{result['date']}, {os.cpu_count()} cores, {args.runs} runs each (A B A B), median "
        f"step after {args.skip} warm-up steps of {args.steps}")
  print("| layout | MaxText step s | llama3_jax step s | ratio | MaxText first step s | "
        "llama3_jax first step s | ratio | other processes' cores (max) |")
  print("|---|---|---|---|---|---|---|---|")
  for layout, r in result["layouts"].items():
    a, b = r["MaxText"], r["llama3_jax"]
    if "error" in a or "error" in b:
      print(f"| {layout} | {a.get('step_s', 'failed')} | {b.get('step_s', 'failed')} | | | | | |")
      continue
    print(f"| {layout} | {a['step_s']:.3f} | {b['step_s']:.3f} | {b['step_s'] / a['step_s']:.2f}x"
          f" | {a['first_step_s']:.1f} | {b['first_step_s']:.1f} | "
          f"{b['first_step_s'] / a['first_step_s']:.2f}x | "
          f"{max(a['other_cores'], b['other_cores']):.2f} |")
  return result


if __name__ == "__main__":
  sys.exit(main() and 0)
