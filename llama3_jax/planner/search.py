"""Price one layout, or search every layout of a GPU count and rank them by MFU.

    result = evaluate(model, layout, hw)            # Result: memory, time, fits, reason
    ranked = search(model, hw, n_gpus=16384, seq_len=8192, batch_tokens=16 * 2**20)

The search tries tensor within a node (1, 2, 4, 8), context and stage in powers of two, the
rest of the GPUs as FSDP (Llama 3's data parallelism), one sequence per pipeline micro-batch,
every interleaving V the stages' layers allow, and each remat policy. Layouts that cannot run
come back with a named `Reason` (tests and the launcher print them), never an exception.
"""

import dataclasses
import math

from llama3_jax.planner.layout import REMATS, Layout, Reason, stage_layers, why_not
from llama3_jax.planner.memory import gib, memory
from llama3_jax.planner.step_time import collectives, link, step_time, wire_bytes

# Memory a job cannot use: the CUDA context, NCCL's buffers and the caching allocator's
# fragmentation take a few GiB of an 80 GB part in practice.
MEMORY_HEADROOM = 0.05


@dataclasses.dataclass(frozen=True)
class Result:
  layout: Layout
  reason: Reason | None        # None: it runs and fits
  memory: dict | None          # bytes per device by component (None if it cannot run)
  time: dict | None

  @property
  def fits(self) -> bool:
    return self.reason is None

  def to_json(self) -> dict:
    out = {"layout": {a: n for a, n in self.layout.sizes.items() if n > 1} or {"data": 1},
           "micro_batches": self.layout.micro_batches, "repeats": self.layout.repeats,
           "schedule": self.layout.schedule, "fsdp_mode": self.layout.fsdp_mode,
           "remat": self.layout.remat, "sequence_parallel": self.layout.sequence_parallel,
           "fits": self.fits, "reason": None if self.reason is None else self.reason.name,
           "why": None if self.reason is None else self.reason.message}
    if self.memory is not None:
      out["memory_gib"] = round(gib(self.memory["total"]), 3)
      out["memory_parts_gib"] = {k: round(gib(v), 3) for k, v in self.memory.items()
                                 if k not in ("total", "stage")}
    if self.time is not None:
      out.update(tflops_per_gpu=round(self.time["tflops_per_gpu"], 1),
                 mfu=round(self.time["mfu"], 4), step_s=round(self.time["step_s"], 3),
                 bubble=round(self.time["bubble"], 4),
                 exposed_s={k: round(v, 4) for k, v in self.time["exposed_s"].items()})
    return out


def evaluate(model, layout: Layout, hw, n_gpus: int | None = None) -> Result:
  reason = why_not(model, layout, n_gpus)
  if reason is not None:
    return Result(layout, reason, None, None)
  parts = memory(model, layout)
  time = step_time(model, layout, hw)
  usable = hw.memory_bytes * (1 - MEMORY_HEADROOM)
  if parts["total"] > usable:
    reason = Reason("out_of_memory", f"{gib(parts['total']):.1f} GiB per device (stage "
                    f"{parts['stage']}) exceeds the {gib(usable):.1f} GiB usable of "
                    f"{hw.name}")
  return Result(layout, reason, parts, time)


def _powers(limit: int) -> list[int]:
  return [2**i for i in range(int(math.log2(limit)) + 1)] if limit >= 1 else [1]


def candidates(model, hw, n_gpus: int, seq_len: int, batch_tokens: int, **options):
  """Every layout the search tries (see the module docstring); `options` fix Layout fields
  (e.g. remat="full") instead of trying each value."""
  remats = [options.pop("remat")] if "remat" in options else list(REMATS)
  rows = batch_tokens // seq_len
  for t in _powers(min(hw.gpus_per_node, n_gpus)):
    for c in _powers(n_gpus // t):
      for s in _powers(n_gpus // (t * c)):
        if n_gpus % (t * c * s):
          continue
        fsdp = n_gpus // (t * c * s)
        sizes = {"tensor": t, "context": c, "stage": s, "fsdp": fsdp}
        per_replica = rows // fsdp if rows % fsdp == 0 else 0
        if s == 1:
          shapes = [(m, 1) for m in sorted({1, max(per_replica, 1)})]
        else:
          # Under 1F1B every chunk needs a layer; the circular pipeline may leave fewer
          # than `s` chunks empty (why_not says which V it refuses).
          most = 8 if options.get("schedule") == "circular" else \
              min(stage_layers(model.n_layers, s))
          shapes = [(max(per_replica, 1), v) for v in range(1, min(most, 8) + 1)]
        for m, v in shapes:
          for remat in remats:
            yield Layout(sizes, seq_len, batch_tokens, micro_batches=m, repeats=v,
                         remat=remat, **options)


def search(model, hw, n_gpus: int, seq_len: int, batch_tokens: int, **options) -> list[Result]:
  """Every candidate evaluated: those that fit first, by MFU, then the refused."""
  results = [evaluate(model, layout, hw, n_gpus)
             for layout in candidates(model, hw, n_gpus, seq_len, batch_tokens, **options)]
  return sorted(results, key=lambda r: (not r.fits, -(r.time["mfu"] if r.time else 0)))


def explain(model, result: Result, hw) -> str:
  """A layout's memory, collectives (axis, link, payload, seconds), bubble and MFU, as text."""
  layout = result.layout
  lines = [f"layout: {layout.describe()} on {layout.n_gpus:,} x {hw.name}"]
  if result.memory is None:
    return "\n".join(lines + [f"cannot run: {result.reason}"])
  lines.append(f"memory per device (stage {result.memory['stage']}):")
  lines += [f"  {k:<20}{gib(v):>9.2f} GiB" for k, v in result.memory.items() if k != "stage"]
  lines.append("collectives per step (busiest device):")
  for c in collectives(model, layout):
    kind, bw = link(layout, hw, c.axis)
    seconds = wire_bytes(c, layout.size(c.axis)) / bw
    lines.append(f"  {c.axis:<8}{c.op:<15}{gib(c.payload):>9.2f} GiB over {kind:<8}"
                 f"{seconds:>7.3f} s at link rate  {c.what}")
  t = result.time
  lines.append(f"step: compute {t['compute_s']:.2f} s + bubble {t['bubble_s']:.2f} s "
               f"({t['bubble']:.1%}) + exposed communication "
               + ", ".join(f"{k} {v:.3f} s" for k, v in t["exposed_s"].items())
               + f" = {t['step_s']:.2f} s")
  lines.append(f"throughput: {t['tflops_per_gpu']:.0f} TFLOP/s per GPU, MFU {t['mfu']:.1%} "
               f"(model FLOPs as the launcher counts them, peak {hw.peak_flops / 1e12:.0f} "
               "TFLOP/s)")
  lines.append("fits" if result.fits else f"does not fit: {result.reason}")
  return "\n".join(lines)
