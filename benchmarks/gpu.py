"""MFU and tokens/s of Llama-3-shaped 1B and 3B models in bf16 on the GPUs of one host.

    python -m benchmarks.gpu --out gpu.json           # on a GPU host; under 10 minutes
    python -m benchmarks.gpu --smoke --out smoke.json # a tiny case on CPU: the script's plumbing

The XLA flags and memory settings of launch/gpu_env.sh are applied first (sourced in bash, its
values merged into this process's environment before JAX starts). Each case is the Llama 3.2
1B or 3B shape (tied embeddings, vocab 128,256) with fp32 master weights and bf16 activations,
FSDP over every local device, AdamW, synthetic packed documents; attention is
`jax.nn.dot_product_attention(implementation="cudnn")` (model option `attention="cudnn"`),
which falls back to the reference kernel with a warning where cuDNN cannot run. A case that
fails to compile or run (out of memory, a cuDNN shape it does not support) is retried with
`remat="full"` and then with `attention="blockwise"`; every attempt and its error is recorded.

MFU counts 6N + causal attention FLOPs per token (llama3_jax/train/metrics.py) against the
data-sheet bf16 dense peak of the device (H100/H200: 989 TFLOP/s). One JSON file holds the
machine, versions, flags and a row per case: compile time, median step time of the timed steps
(after warm-up), tokens/s (total and per device), MFU, compiled memory per device.
"""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def gpu_environment() -> dict[str, str]:
  """The variables launch/gpu_env.sh exports, as `source launch/gpu_env.sh` would set them."""
  script = f"source {ROOT / 'launch' / 'gpu_env.sh'} && env -0"
  out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
  env = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
  return {k: v for k, v in env.items() if os.environ.get(k) != v}


if __name__ == "__main__":   # before JAX reads its flags
  os.environ.update(gpu_environment())

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen  # noqa: E402

from llama3_jax.data.synthetic import synthetic_batch  # noqa: E402
from llama3_jax.model import attention_ops  # noqa: E402
from llama3_jax.model.config import SIZES, ModelConfig  # noqa: E402
from llama3_jax.sharding import MeshConfig  # noqa: E402
from llama3_jax.model.flops import flops_per_token  # noqa: E402
from llama3_jax.train.metrics import peak_flops  # noqa: E402
from llama3_jax.train.setup import setup  # noqa: E402

# (name, model, sequence length, rows per device, remat). Rows per device are sized so that
# fp32 weights + Adam (16 bytes a parameter) and the activations fit 80 GB with room to spare.
CASES = (
    ("llama3.2-1b seq 8192", "llama3.2-1b", 8192, 2, "none"),
    ("llama3.2-1b seq 4096", "llama3.2-1b", 4096, 4, "none"),
    ("llama3.2-3b seq 4096", "llama3.2-3b", 4096, 2, "save_names"),
    ("llama3.2-3b seq 8192", "llama3.2-3b", 8192, 1, "save_names"),
)
SMOKE = (("tiny seq 256 (smoke)", ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4,
                                              n_kv_heads=2, head_dim=16, ffn_dim=128),
          256, 1, "none"),)


def model_for(model, remat: str, attention: str) -> ModelConfig:
  base = SIZES[model] if isinstance(model, str) else model
  return base.replace(dtype="bfloat16", param_dtype="float32", remat=remat, attention=attention)


def run_case(model: ModelConfig, seq_len: int, batch: int, steps: int, warmup: int) -> dict:
  """One configuration: compile, warm up, time `steps` steps. Raises what the step raises."""
  s = setup(model, MeshConfig(fsdp=jax.device_count()), global_batch=batch, seq_len=seq_len)
  state = s.init_state()
  batches = [jax.device_put(synthetic_batch(0, i, batch, seq_len, model.vocab_size),
                            s.fns.batch_sharding) for i in range(2)]
  lr = np.float32(1e-4)
  start = time.perf_counter()
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    compiled = s.fns.train.jitted.lower(state, batches[0], lr).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batches[i % 2], lr)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times[warmup:])
  tokens_per_s = batch * seq_len / step_s
  peak, peak_source = peak_flops()
  return {
      "compile_s": round(compile_s, 2), "step_s": round(step_s, 4),
      "step_times_s": [round(t, 4) for t in times],
      "tokens_per_s": round(tokens_per_s, 1),
      "tokens_per_s_per_device": round(tokens_per_s / jax.device_count(), 1),
      "mfu": round(flops_per_token(model, seq_len) * tokens_per_s / peak, 4) if peak else None,
      "peak_flops": peak, "peak_source": peak_source,
      "loss_last": float(metrics["loss"]),
      "memory_per_device_gib": None if memory is None else round(
          (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30, 2),
  }


def attempts(remat: str):
  """(remat, attention) to try in turn: as asked, then less memory, then no cuDNN."""
  yield remat, "cudnn"
  if remat != "full":
    yield "full", "cudnn"
  yield "full", "blockwise"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="gpu_benchmark.json")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--budget_s", type=float, default=540.0,
                      help="cases not started by then are skipped (the run stays under 10 min)")
  parser.add_argument("--smoke", action="store_true", help="a tiny case (runs on CPU)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  device = jax.devices()[0]
  result = {
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "device_kind": device.device_kind, "platform": device.platform,
      "device_count": jax.device_count(), "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # None: attention="cudnn" runs cuDNN's kernel; else why it falls back to "reference".
      "cudnn_unsupported": attention_ops.cudnn_unsupported(jnp.bfloat16), "cases": [],
  }
  for name, model, seq_len, rows, remat in SMOKE if args.smoke else CASES:
    row = {"case": name, "seq_len": seq_len, "global_batch": rows * jax.device_count(),
           "attempts": []}
    result["cases"].append(row)
    for remat_now, attention in attempts(remat):
      if time.perf_counter() - start > args.budget_s:
        row["skipped"] = f"time budget of {args.budget_s:.0f} s spent"
        break
      config = model_for(model, remat_now, attention)
      attempt = {"remat": remat_now, "attention": attention}
      row["attempts"].append(attempt)
      try:
        attempt.update(run_case(config, seq_len, row["global_batch"], args.steps, args.warmup))
        row.update(attempt)
        break
      except Exception as error:  # noqa: BLE001 - recorded, then the next attempt
        attempt["error"] = f"{type(error).__name__}: {error}"[:2000]
        traceback.print_exc()
    print(json.dumps({k: v for k, v in row.items() if k != "attempts"}), flush=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))   # after every case
  result["wall_s"] = round(time.perf_counter() - start, 1)
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
  print(f"wrote {args.out} ({result['wall_s']} s)")
  return result


if __name__ == "__main__":
  main()
