"""Plan a training layout: per-device memory and expected MFU, ranked, or one layout explained.

python -m experiments.plan                     # the default question: 405B, 16K H100s, 8K, 16M
python -m experiments.plan --size llama3-405b --gpus 16384 --hardware h100 --seq 8192 \
    --batch-tokens 16M                         # the best layouts ranked, memory and MFU each
python -m experiments.plan --layout tensor=8,stage=16,fsdp=128 --micro-batches 16 --repeats 7
python -m experiments.plan --seq 128K --layout tensor=8,context=16,stage=16,fsdp=8 --json
python -m experiments.plan --out plan.json     # also write the JSON list to a file

Nothing is allocated and nothing compiles: the planner (llama3_jax/planner/) prices a layout
from the model's shapes, the hardware's data sheet and named efficiency constants. `fsdp` is
Llama 3's data parallelism (optimizer state and gradients sharded); `data` replicates them.
`--json` prints a JSON list, one object per layout, with `layout` (axis -> size),
`memory_gib` (per device), `tflops_per_gpu` and `mfu` (a fraction), plus the rest. A layout
that cannot run (GPUs not the product of the axes, tensor over the KV heads without whole
copies, a sequence context cannot cut in 2 x context chunks...) is named with its reason, exit 2;
one that runs out of memory is explained with the reason, exit 0. Exit codes: 0 answered,
2 bad input (one line: `error: <what>: <fix>`).
"""

import json
import pathlib
import sys

from llama3_jax import cli
from llama3_jax.errors import UserError, at_least, writable_file

DEFAULTS = dict(size="llama3-405b", gpus=16384, hardware="h100", seq="8192", batch_tokens="16M")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def count(text: str, flag: str) -> int:
  """`16M` = 16 x 2^20 (Llama 3's 16M-token batch is 2,048 x 8,192), `128K`, or a number."""
  text = text.strip()
  scale = _UNITS.get(text[-1:].upper(), 1)
  number = text[:-1] if scale > 1 else text
  try:
    value = float(number) * scale
  except ValueError:
    raise UserError(f"{flag} {text!r} is not a count", "write e.g. 8192, 128K or 16M") from None
  if value <= 0 or value != int(value):
    raise UserError(f"{flag} {text!r} must be a positive whole count", "write e.g. 16M")
  return int(value)


def parse(argv):
  from llama3_jax.model import SIZES
  from llama3_jax.planner.layout import REMATS, SCHEDULES
  p = cli.ArgumentParser(prog="python -m experiments.plan", description=__doc__.split("\n")[0])
  p.add_argument("--size", default=DEFAULTS["size"], choices=sorted(SIZES))
  p.add_argument("--gpus", type=int, default=None,
                 help=f"GPU count (default {DEFAULTS['gpus']}; with --layout: its product)")
  p.add_argument("--hardware", default=DEFAULTS["hardware"], help="h100, h200, a100 or b200")
  p.add_argument("--seq", default=DEFAULTS["seq"], help="sequence length, e.g. 8192 or 128K")
  p.add_argument("--batch-tokens", default=DEFAULTS["batch_tokens"], help="global batch")
  p.add_argument("--layout", help="explain one layout: axis=size,... (axes data, fsdp, stage, "
                 "context, tensor)")
  p.add_argument("--micro-batches", type=int, default=None,
                 help="with --layout: pipeline micro-batches (default: one sequence each)")
  p.add_argument("--repeats", type=int, default=None,
                 help="with --layout: interleaved chunks per stage V (default: the best)")
  p.add_argument("--schedule", default="1f1b", choices=SCHEDULES,
                 help="1f1b: Llama 3's interleaved 1F1B; circular: this project's pipeline")
  p.add_argument("--fsdp-mode", default="llama3", choices=["llama3", "zero3"])
  p.add_argument("--remat", default=None, choices=REMATS, help="default: search all")
  p.add_argument("--no-sequence-parallel", action="store_true")
  p.add_argument("--dtype", default="bfloat16", help="compute dtype (matmuls, activations)")
  p.add_argument("--gather-dtype", default="bfloat16",
                 help="weights as FSDP gathers them (this project's step gathers float32 "
                      "masters today; Llama 3 gathers bf16)")
  p.add_argument("--top", type=int, default=10, help="layouts shown when ranking")
  p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
  p.add_argument("--out", help="also write the JSON list to this file")
  args = p.parse_args(argv)
  for flag in ("gpus", "micro_batches", "repeats", "top"):   # refused, never read as "default"
    at_least(getattr(args, flag), 1, "--" + flag.replace("_", "-"))
  if args.out:
    writable_file(args.out, "--out")
  return args


def main(argv=None):
  args = parse(argv)
  from llama3_jax.planner import get_hardware
  from llama3_jax.planner.search import explain, search
  hw = get_hardware(args.hardware)
  model = _model(args)
  seq, batch = count(args.seq, "--seq"), count(args.batch_tokens, "--batch-tokens")
  options = dict(schedule=args.schedule, fsdp_mode=args.fsdp_mode,
                 sequence_parallel=not args.no_sequence_parallel, gather_dtype=args.gather_dtype)
  if args.remat:
    options["remat"] = args.remat
  if args.layout:
    results = [_one(model, args, hw, seq, batch, options)]
    text = explain(model, results[0], hw)
    sizes = results[0].layout.sizes
    if sizes.get("data", 1) > 1 and sizes.get("fsdp", 1) == 1:
      text += (f"\nnote: data={sizes['data']} replicates parameters and optimizer state; "
               f"Llama 3's data parallelism shards them: fsdp={sizes['data']}")
  else:
    gpus = args.gpus or DEFAULTS["gpus"]
    ranked = search(model, hw, gpus, seq, batch, **options)
    fitting = _distinct([r for r in ranked if r.fits])
    results = fitting[:args.top]
    text = _ranking(args, hw, gpus, seq, batch, fitting, ranked)
  payload = [r.to_json() for r in results]
  print(json.dumps(payload, indent=1) if args.json else text)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr if args.json else sys.stdout)
  elif not args.json:
    print("(nothing written; --out FILE saves this as JSON)")


def _model(args):
  from llama3_jax.model import SIZES
  if args.dtype not in ("float32", "bfloat16", "float16"):
    raise UserError(f"--dtype {args.dtype!r}", "use float32, bfloat16 or float16")
  # Planned with a flash-style (blockwise) attention kernel: the reference kernel's [T, S]
  # probabilities are a CPU test path, not a large-scale layout.
  return SIZES[args.size].replace(dtype=args.dtype, attention="blockwise")


def _one(model, args, hw, seq, batch, options):
  from llama3_jax.planner.layout import Layout, why_not
  from llama3_jax.planner.search import evaluate
  from llama3_jax.sharding import parse_mesh
  sizes = parse_mesh(args.layout, "--layout")
  if any(n < 1 for n in sizes.values()):
    raise UserError(f"--layout {args.layout}: sizes must be positive", "e.g. tensor=8,stage=16")
  gpus = args.gpus
  replicas = sizes.get("data", 1) * sizes.get("fsdp", 1)
  micro = args.micro_batches or (max(batch // seq // replicas, 1) if sizes.get("stage", 1) > 1
                                 else 1)
  base = dict(micro_batches=micro, **options)
  if "remat" not in base:
    base["remat"] = "minimal" if options["schedule"] == "1f1b" else "none"
  layouts = [Layout(sizes, seq, batch, repeats=v, **base)
             for v in ([args.repeats] if args.repeats else range(1, 9))]
  first = why_not(model, layouts[0], gpus)
  if first is not None:
    raise UserError(f"--layout {args.layout} cannot run {args.size}: {first}",
                    "change the layout (python -m experiments.plan ranks the ones that can)")
  results = [evaluate(model, layout, hw, gpus) for layout in layouts
             if why_not(model, layout, gpus) is None]
  return max(results, key=lambda r: (r.fits, r.time["mfu"]))


def _distinct(results):
  """One row per mesh and interleaving: the cheapest-memory remat among equal MFUs."""
  seen, out = set(), []
  for r in sorted(results, key=lambda r: (-round(r.time["mfu"], 4), r.memory["total"])):
    key = (tuple(sorted(r.layout.sizes.items())), r.layout.repeats, round(r.time["mfu"], 4))
    if key not in seen:
      seen.add(key)
      out.append(r)
  return out


def _ranking(args, hw, gpus, seq, batch, fitting, ranked) -> str:
  from llama3_jax.planner.memory import gib
  lines = [f"{args.size} on {gpus:,} x {hw.name}, sequence {seq:,}, batch {batch:,} tokens: "
           f"{len(fitting)} layouts fit of {len(ranked)} tried"]
  lines.append(f"{'#':>3}  {'layout':<74}{'GiB/GPU':>8}{'TFLOP/s':>9}{'MFU':>7}{'bubble':>8}")
  for i, r in enumerate(fitting[:args.top], 1):
    lines.append(f"{i:>3}  {r.layout.describe():<74}{gib(r.memory['total']):>8.1f}"
                 f"{r.time['tflops_per_gpu']:>9.0f}{r.time['mfu']:>7.1%}"
                 f"{r.time['bubble']:>8.1%}")
  refused = {}
  for r in ranked:
    if not r.fits:
      refused[r.reason.name] = refused.get(r.reason.name, 0) + 1
  if refused:
    lines.append("refused: " + ", ".join(f"{n} {name}" for name, n in sorted(refused.items())))
  lines.append("explain one: --layout tensor=8,stage=16,fsdp=128 (see --help)")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.run(main)
