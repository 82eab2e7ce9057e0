"""Host memory and time to load a Hugging Face model much larger than a process's baseline:
sharded loading (each process reads its slices) against a plain `hf.load` + `device_put`.

python -m benchmarks.load_model                 # ~400M parameters, fp32 (1.5 GiB); ~5 min
python -m benchmarks.load_model --layers 2      # a smaller model, for a quick look

A random Llama 3 shape with the 128K vocabulary (d_model 1024, 16 heads on 8 KV heads, FFN
4096, 8 layers: 389M parameters) is written once as HF safetensors shards. Each measurement is a
fresh job of 8 CPU devices in all (`launch.local` for 2 and 4 processes), FSDP over all of them;
each process reports its peak RSS (VmHWM) and the load's wall time:
  tiny     the same job loading a 2-layer, 1K-vocabulary model: the baseline a process has
           anyway (JAX, the libraries, the compiled programs);
  plain    `hf.load` (the whole model on the first device), then `jax.device_put` onto the
           mesh (`make_array_from_callback` from the whole host copy with several processes):
           what loading did before it was sharded;
  sharded  `load_params(path, target)`: each process reads only its devices' slices.
Per process, peak minus the tiny run's peak is what the model costs; the table gives it as a
fraction of the model's bytes (target: <= 0.6 with 2 processes, falling with more). Runs go
A B A B; times are the faster of two (the file in the page cache for both).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES = 8


def model_config(layers: int, vocab: int = 128_256):
  from llama3_jax.model import ModelConfig
  return ModelConfig(vocab_size=vocab, d_model=1024, n_layers=layers, n_heads=16, n_kv_heads=8,
                     head_dim=64, ffn_dim=4096, max_seq_len=8192)


def write_model(config, path: pathlib.Path, max_shard_bytes: int = 2**30) -> int:
  """A random model of `config` as an HF directory, written one tensor at a time (never the
  whole model in memory); its bytes."""
  import numpy as np
  import safetensors.numpy
  from llama3_jax.checkpoint.hf.layout import tensor_map
  from llama3_jax.checkpoint.hf.weights import config_to_hf
  from llama3_jax.checkpoint.target import model_target
  from flax import nnx
  _, abstract = model_target(config)
  shapes = nnx.to_pure_dict(abstract)
  rng = np.random.default_rng(0)
  path.mkdir(parents=True)
  shard, shard_bytes, weight_map, total = {}, 0, {}, 0

  def flush():
    nonlocal shard, shard_bytes
    name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
    safetensors.numpy.save_file(shard, str(path / name), metadata={"format": "pt"})
    weight_map.update({tensor: name for tensor in shard})
    shard, shard_bytes = {}, 0

  for row in tensor_map(lm_head=not config.tie_embeddings):
    shape = shapes
    for key in row.path:
      shape = shape[key]
    shape = shape.shape[1:] if row.stacked else shape.shape
    for name in row.names(config.n_layers):
      array = (rng.standard_normal(row.layout.hf_shape(shape), np.float32) * 0.02)
      if shard and shard_bytes + array.nbytes > max_shard_bytes:
        flush()
      shard[name], shard_bytes, total = array, shard_bytes + array.nbytes, total + array.nbytes
  flush()
  (path / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}))
  (path / "config.json").write_text(json.dumps(config_to_hf(config, "float32")))
  return total


def child(mode: str, path: str, out: str) -> None:
  """One process of a measurement: load, then write {peak_kb, load_s} to OUT/<process>.json."""
  from llama3_jax.runtime import distributed
  distributed.initialize()
  import jax
  import numpy as np
  from flax import nnx
  from llama3_jax import hf
  from llama3_jax.checkpoint.model import load_params
  from llama3_jax.checkpoint.target import model_target
  from llama3_jax.sharding import MeshConfig, make_mesh
  mesh = make_mesh(MeshConfig(fsdp=-1))
  config, _ = hf.read_config(path)
  _, target = model_target(config, "lm", mesh)
  start = time.perf_counter()
  if mode == "plain":
    _, model = hf.load(path)
    whole = jax.tree.leaves(nnx.state(model))
    shardings = [t.sharding for t in jax.tree.leaves(target)]
    if jax.process_count() == 1:
      params = jax.device_put(whole, shardings)
    else:   # device_put cannot reach other processes' devices: from the whole host copy
      params = []
      for x, sharding in zip(whole, shardings):
        host = np.asarray(x)
        params.append(jax.make_array_from_callback(host.shape, sharding,
                                                   lambda index, host=host: host[index]))
    del model, whole
  else:   # sharded and tiny
    params = load_params(path, target)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  pathlib.Path(out, f"{jax.process_index()}.json").write_text(json.dumps({
      "peak_kb": peak_rss_kb(), "load_s": seconds}))


def peak_rss_kb() -> int:
  """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
  parent that forked it)."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1])
  raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(mode: str, path: pathlib.Path, processes: int) -> dict:
  """A fresh job of `processes` processes (8 devices in all) loading `path`; per process peak
  RSS (bytes) and the slowest process's load time."""
  with tempfile.TemporaryDirectory() as out:
    job = [sys.executable, "-m", "benchmarks.load_model", "--child", mode, str(path), out]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if processes == 1:
      command, env["JAX_NUM_CPU_DEVICES"] = job, str(DEVICES)
    else:
      command = [sys.executable, "-m", "launch.local", "--processes", str(processes),
                 "--devices", str(DEVICES), "--max-restarts", "0", "--"] + job
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"{mode} x{processes} failed:\n{result.stdout[-3000:]}"
                         f"{result.stderr[-3000:]}")
    rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(out).glob("*.json"))]
  return {"peak": max(r["peak_kb"] for r in rows) * 1024,
          "load_s": max(r["load_s"] for r in rows)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--processes", default="1,2,4")
  parser.add_argument("--dir", default=None, help="where the models are written (a temporary "
                      "directory by default)")
  parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(*args.child)
  counts = [int(n) for n in args.processes.split(",")]
  with tempfile.TemporaryDirectory(dir=args.dir) as root:
    root = pathlib.Path(root)
    config = model_config(args.layers)
    model_bytes = write_model(config, root / "model")
    write_model(model_config(2, vocab=1024).replace(d_model=256, ffn_dim=512, n_heads=4,
                                                    n_kv_heads=2), root / "tiny")
    params = model_bytes // 4
    print(f"model: {params / 1e6:.0f}M parameters, {model_bytes / 2**30:.2f} GiB fp32 "
          f"({config.n_layers} layers, vocab {config.vocab_size:,}); {DEVICES} CPU devices, "
          "FSDP over all")
    runs = {}
    cases = [(mode, n) for n in counts for mode in ("tiny", "plain", "sharded")
             if mode != "plain" or n <= 2]
    for _ in range(2):   # A B A B
      for mode, n in cases:
        r = measure(mode, root / ("tiny" if mode == "tiny" else "model"), n)
        best = runs.setdefault((mode, n), r)
        best["load_s"] = min(best["load_s"], r["load_s"])
        best["peak"] = min(best["peak"], r["peak"])
  print(f"\n{'processes':>9} {'method':>8} {'peak RSS/process':>17} {'minus tiny':>11} "
        f"{'x model':>8} {'load s':>7} {'vs plain':>9}")
  table = []
  for n in counts:
    for mode in ("plain", "sharded"):
      if (mode, n) not in runs:
        continue
      r, tiny = runs[(mode, n)], runs[("tiny", n)]
      extra = r["peak"] - tiny["peak"]
      plain = runs.get(("plain", n)) or runs[("plain", 1)]
      row = {"processes": n, "method": mode, "peak_gib": r["peak"] / 2**30,
             "model_gib_per_process": extra / 2**30, "x_model": extra / model_bytes,
             "load_s": r["load_s"], "time_vs_plain": r["load_s"] / plain["load_s"]}
      table.append(row)
      print(f"{n:>9} {mode:>8} {row['peak_gib']:>13.2f} GiB {row['model_gib_per_process']:>7.2f}"
            f" GiB {row['x_model']:>8.2f} {row['load_s']:>7.1f} {row['time_vs_plain']:>8.2f}x")
  print("\n(tiny model's peak per process: " + ", ".join(
      f"{n} proc {runs[('tiny', n)]['peak'] / 2**30:.2f} GiB" for n in counts) + "; "
      "'vs plain': load time over plain's with as many processes, else one)")
  return {"model_bytes": model_bytes, "rows": table}


if __name__ == "__main__":
  main()
