"""Context parallelism: per-device memory and step time, 1K to 16K tokens, on 8 devices.

    python -m benchmarks.context_parallel                     # 8 fake CPU devices, ~6 min
    python -m benchmarks.context_parallel --lengths 1024,2048 --markdown /tmp/cp.md

The regime context parallelism is for: fewer sequences than devices. Without it (fsdp=8),
each device must hold a whole sequence, so a step trains 8 sequences; with it (context=8), one
sequence is split over the 8 devices (Llama 3's 2*8 load-balanced chunks). Per length it prints
- peak memory per device of the compiled loss-and-gradients step (XLA memory analysis);
- attention memory per device: the working memory (temporaries: saved residuals, gathered K/V,
  score blocks) of one attention layer's forward + backward compiled alone, with the blockwise
  (flash) kernel the model uses, and for contrast with the dense kernel (O(local T x T) scores);
- step time and tokens/s of the whole machine (8 fake devices share the host's cores, so
  tokens/s compares the work done, not the speed-up that 8 real devices would give).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen  # noqa: E402

from llama3_jax.model import ModelConfig  # noqa: E402
from llama3_jax.model.attention_ops import local_attention  # noqa: E402
from llama3_jax.parallel import context as context_parallel  # noqa: E402
from llama3_jax.sharding import MeshConfig, ShardingConfig, make_mesh, make_rules  # noqa: E402
from llama3_jax.train.setup import setup  # noqa: E402

MODEL = ModelConfig(vocab_size=256, d_model=64, n_layers=1, n_heads=2, n_kv_heads=1,
                    head_dim=32, ffn_dim=160, attention="blockwise", attention_block_q=512,
                    attention_block_kv=512)
LAYOUTS = {   # name: (mesh, context schedule, sequences per step)
    "no CP": (MeshConfig(fsdp=8), "all_gather", 8),
    "CP all-gather": (MeshConfig(fsdp=1, context=8), "all_gather", 1),
    "CP ring": (MeshConfig(fsdp=1, context=8), "ring", 1),
}
MIB = 2**20


def packed_batch(B: int, T: int, seed: int = 0) -> dict:
  """Rows of documents of random length (64 tokens to T/2), all targets counted."""
  r = np.random.RandomState(seed)
  segments = np.zeros((B, T), np.int32)
  for row in segments:
    start, doc = 0, 1
    while start < T:
      length = r.randint(64, T // 2)
      row[start:start + length], start, doc = doc, start + length, doc + 1
  tokens = r.randint(0, MODEL.vocab_size, (B, T + 1))
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
          "loss_mask": np.ones((B, T), np.float32)}


def peak_bytes(compiled) -> int:
  """Arguments + outputs + temporaries (XLA:CPU's `peak_memory_in_bytes` omits temporaries)."""
  m = compiled.memory_analysis()
  return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes)


def step_measure(layout: str, T: int, min_time_s: float) -> dict:
  mesh_config, schedule, B = LAYOUTS[layout]
  s = setup(MODEL, mesh_config, sharding=ShardingConfig(context_schedule=schedule))
  state, fns = s.init_state(), s.fns
  batch = jax.device_put(packed_batch(B, T), fns.batch_sharding)
  with jax.set_mesh(s.mesh), linen.logical_axis_rules(s.rules):
    compiled = fns.loss_and_grads.jitted.lower(state, batch).compile()
  times = []   # already compiled: the first call is a fair sample unless it is short
  while len(times) < 4 and sum(times) < min_time_s:
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, batch))
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times[1:] if len(times) > 1 else times))
  return {"peak": peak_bytes(compiled), "step_s": step_s, "tokens_per_s": B * T / step_s}


def attention_temp_bytes(layout: str, T: int, model: ModelConfig = MODEL) -> int:
  """Temporaries of one attention layer's forward + backward, per device (compiled alone)."""
  mesh_config, schedule, B = LAYOUTS[layout]
  mesh = make_mesh(mesh_config)
  rules = make_rules(MODEL, mesh_config.sizes(8))
  N, K, H = MODEL.n_heads, MODEL.n_kv_heads, MODEL.head_dim
  args = (jax.ShapeDtypeStruct((B, T, N, H), jnp.float32),
          jax.ShapeDtypeStruct((B, T, K, H), jnp.float32),
          jax.ShapeDtypeStruct((B, T, K, H), jnp.float32),
          jax.ShapeDtypeStruct((B, T), jnp.int32), jax.ShapeDtypeStruct((B, T), jnp.int32))
  if mesh_config.context > 1:
    attend = functools.partial(context_parallel.context_attention, config=model, mesh=mesh,
                               rules=rules, schedule=schedule)
  else:
    def attend(q, k, v, seg, idx):
      return local_attention(q, k, v, seg, seg, idx, idx, model)
  spec = jax.sharding.PartitionSpec(("data", "fsdp"), "context")
  sharded = jax.sharding.NamedSharding(mesh, spec)
  in_shardings = tuple(sharded for _ in args)

  def loss(q, k, v, seg, idx):
    return attend(q, k, v, seg, idx).sum()

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), in_shardings=in_shardings)
  with jax.set_mesh(mesh), linen.logical_axis_rules(rules):
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
  parser.add_argument("--min-time", type=float, default=4.0, help="seconds timed per point")
  parser.add_argument("--markdown", default="", help="also write the table to this file")
  args = parser.parse_args()
  lengths = [int(n) for n in args.lengths.split(",")]
  print(f"model: d_model {MODEL.d_model}, {MODEL.n_layers} layer, {MODEL.n_heads} heads, "
        f"{MODEL.n_kv_heads} KV head, head dim {MODEL.head_dim}, blockwise attention "
        f"{MODEL.attention_block_q}x{MODEL.attention_block_kv}; fp32; "
        f"{jax.device_count()} {jax.devices()[0].platform} devices")
  header = ("| seq len | layout | seqs/step | step peak MiB/device | attention MiB/device | "
            "same, dense kernel | step s | tokens/s |")
  rows = [header, "|" + "---|" * 8]
  print(header)
  for T in lengths:
    for layout in LAYOUTS:
      step = step_measure(layout, T, args.min_time)
      attention = attention_temp_bytes(layout, T)
      dense = ("flash" if LAYOUTS[layout][1] == "ring" else   # the ring always runs flash
               f"{attention_temp_bytes(layout, T, MODEL.replace(attention='reference')) / MIB:,.1f}")
      row = (f"| {T:,} | {layout} | {LAYOUTS[layout][2]} | {step['peak'] / MIB:,.1f} | "
             f"{attention / MIB:,.2f} | {dense} | {step['step_s']:.3f} | "
             f"{step['tokens_per_s']:,.0f} |")
      rows.append(row)
      print(row, flush=True)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
  main()
