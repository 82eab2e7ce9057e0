"""Training metrics: model FLOPs, MFU, the metrics rows and their writers (metrics.jsonl,
TensorBoard), the progress bar.

MFU = model FLOPs per second / peak FLOP/s, model FLOPs per token as llama3_jax/model/flops.py
counts them (6N plus causal attention). The peak is the bf16 dense peak of known
accelerators (override with `peak_flops`); on CPU it is measured once by a large fp32 matmul
(and kept in the cache directory, keyed by processor, core count and JAX version).
"""

import concurrent.futures
import json
import math
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from llama3_jax.model.flops import flops_per_token
from llama3_jax.runtime.hooks import Hook

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (SXM parts).
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "B200": 2250e12, "L40S": 362e12,
    "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v4": 275e12,
}


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of the best of a few large fp32 matmuls on the first device (the CPU's peak)."""
  device = jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def cpu_info(field: str) -> str:
  """A field of /proc/cpuinfo ("model name", "flags"); "" where there is none."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(field):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return ""


def cpu_name() -> str:
  return cpu_info("model name") or platform.processor() or platform.machine()


def measured_cpu_peak(cache: pathlib.Path | None, remeasure: bool = False) -> float:
  """This machine's fp32 matmul peak, kept in `cache` (a JSON file keyed by processor, core
  count and JAX version) so that a launch does not spend a second measuring it before its first
  step. Other jobs on the machine only ever lower a measurement, so the cache keeps the highest
  one seen; `remeasure` (done at the end of a run, off the critical path) measures again."""
  key = f"{cpu_name()} x{os.cpu_count()} jax {jax.__version__}"
  known = {}
  if cache is not None and cache.exists():
    try:
      known = json.loads(cache.read_text())
    except ValueError:
      known = {}
  if remeasure or key not in known:
    known[key] = max(known.get(key, 0.0), measure_matmul_peak())
    if cache is not None:
      cache.parent.mkdir(parents=True, exist_ok=True)
      temporary = cache.with_suffix(f".{os.getpid()}.tmp")
      temporary.write_text(json.dumps(known, indent=1))
      temporary.replace(cache)
  return known[key]


def peak_flops(override: float = 0.0, cache: pathlib.Path | None = None) -> tuple[float, str]:
  """(peak FLOP/s of the whole job, how it was found); `cache`: where a measured CPU peak is
  kept between launches (None: measure now)."""
  if override:
    return override * jax.device_count(), "from config"
  device = jax.devices()[0]
  if device.platform == "cpu":
    # Fake CPU devices share the same cores: the machine's peak is one matmul's.
    return measured_cpu_peak(cache), "measured fp32 matmul"
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in device.device_kind.lower():
      return flops * jax.device_count(), f"{name} bf16 data sheet"
  return 0.0, f"unknown device {device.device_kind!r}: set mfu.peak_flops"


# The train step's own values (the rest are the objective's metrics, logged under their names).
_STEP_VALUES = ("loss", "grad_norm", "loss_tokens", "finite", "skipped_total")


class MetricsLogger(Hook):
  """The training loop's metrics rows: every `every` steps and at the last step, on every
  process (other hooks' `log_fields` may be collectives); process 0 writes them.

  A row: step, loss, lr, grad_norm, tokens, tokens_per_s and step_time_s (averaged since the
  previous row), seq_len, batch_tokens, mfu, skipped counts, device peak memory where the
  backend reports it, the objective's metrics and the `fields` hooks' fields (e.g. the
  pipeline's bubble, the data's tokens per source).
  """

  def __init__(self, workdir, *, steps: int, start: int, every: int, tokens: list[int],
               schedule, model_config, peak: float, fields=(), primary: bool = True):
    self.workdir, self.steps, self.every, self.tokens = workdir, steps, every, tokens
    self.schedule, self.model_config, self.peak = schedule, model_config, peak
    self.fields = list(fields)
    self.writer = MetricsWriter(workdir, start) if primary else None
    self.progress = Progress(steps, start) if primary else None
    self.last = (time.perf_counter(), start)

  def dispatched(self, output) -> None:
    if self.writer:   # opens while the (first) step runs on the devices
      self.writer.open_tensorboard()

  def after_step(self, result) -> None:   # every `every` steps and at the last (Hook.due)
    if self.writer:
      self.writer.wait_for_tensorboard()
    done = result.step
    now = time.perf_counter()
    step_time = (now - self.last[0]) / (done - self.last[1])
    tokens_per_s = result.stage.batch_tokens / step_time
    values = result.values
    row = {"step": done, "loss": float(values["loss"]),
           "lr": float(self.schedule(self.tokens[done - 1])),
           "grad_norm": float(values["grad_norm"]), "tokens": self.tokens[done],
           "tokens_per_s": tokens_per_s, "step_time_s": step_time,
           "seq_len": result.stage.seq_len, "batch_tokens": result.stage.batch_tokens,
           "mfu": flops_per_token(self.model_config, result.stage.seq_len) * tokens_per_s
           / self.peak if self.peak else 0.0}
    if "finite" in values:
      row.update(skipped=int(not values["finite"]), skipped_total=int(values["skipped_total"]))
    row.update({name: float(value) for name, value in values.items()   # the objective's own
                if name not in _STEP_VALUES and np.ndim(value) == 0})
    memory = jax.local_devices()[0].memory_stats()   # None where the backend has none
    if memory and "peak_bytes_in_use" in memory:
      row["device_peak_memory_gib"] = memory["peak_bytes_in_use"] / 2**30
    for hook in self.fields:
      row.update(hook.log_fields(result))
    if self.writer:
      self.writer.write(row)
      self.progress.update(done, row)
    self.last = (now, done)

  def after_rollback(self, step: int) -> None:
    if self.writer:
      self.writer.truncate(step)
    self.last = (time.perf_counter(), step)

  def close(self) -> dict:
    """Closes the writers; the run's summary from its rows (medians of the rates past the first
    row), and the loss/LR plot, on process 0."""
    if not self.writer:
      return {}
    self.progress.close()
    self.writer.close()
    rows = read_metrics(self.workdir)
    if not rows:
      return {}
    plot(rows, self.workdir / "loss_lr.png")
    return {"loss": rows[-1]["loss"], "tokens": rows[-1]["tokens"],
            "tokens_per_s": float(np.median([r["tokens_per_s"] for r in rows[1:] or rows])),
            "mfu": float(np.median([r["mfu"] for r in rows[1:] or rows]))}


class MetricsWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard.

  Written by JAX process 0 only: every process sees the same global metrics.
  """

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    self.file = None
    self.truncate(resume_step)
    self.tensorboard_dir = workdir / "tensorboard"
    self._tensorboard = None

  def open_tensorboard(self) -> None:
    """Starts opening the TensorBoard writer in a background thread. tensorboardX imports torch
    where it is installed (~2.5 s of Python, holding the GIL): the loop calls this once a step
    runs on the devices and the main thread only waits; the first write waits for it."""
    if self._tensorboard is None:
      self._tensorboard = concurrent.futures.ThreadPoolExecutor(1).submit(
          _summary_writer, self.tensorboard_dir)

  @property
  def tensorboard(self):
    self.open_tensorboard()
    return self._tensorboard.result()

  def wait_for_tensorboard(self) -> None:
    self.tensorboard   # noqa: B018 - waits for the writer to open

  def truncate(self, step: int) -> None:
    """Drops rows past `step` (a resume or rollback point): those steps are about to be redone."""
    if self.file:
      self.file.close()
    if self.path.exists():
      rows = [line for line in self.path.read_text().splitlines()
              if line and json.loads(line)["step"] <= step]
      self.path.write_text("".join(row + "\n" for row in rows))
    self.file = self.path.open("a")

  def write(self, row: dict) -> None:
    self.file.write(json.dumps(row) + "\n")
    self.file.flush()
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)):
        self.tensorboard.add_scalar(key, value, row["step"])

  def close(self) -> None:
    self.file.close()
    self.tensorboard.close()


def _summary_writer(directory: pathlib.Path):
  from tensorboardX import SummaryWriter   # imported late: only the launcher needs it
  return SummaryWriter(str(directory))


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot(rows: list[dict], path) -> None:
  """A PNG with the loss and the learning rate against the step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  steps = [r["step"] for r in rows]
  fig, loss_ax = plt.subplots(figsize=(8, 4.5))
  loss_ax.plot(steps, [r["loss"] for r in rows], color="tab:blue")
  loss_ax.set_xlabel("step")
  loss_ax.set_ylabel("loss", color="tab:blue")
  lr_ax = loss_ax.twinx()
  lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:orange")
  lr_ax.set_ylabel("learning rate", color="tab:orange")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


class Progress:
  """A rich progress bar with ETA on a terminal; plain log lines otherwise."""

  def __init__(self, total: int, start: int):
    self.bar = None
    if sys.stdout.isatty():
      from rich import progress as rich
      self.bar = rich.Progress(rich.TextColumn("train"), rich.BarColumn(),
                               rich.MofNCompleteColumn(), rich.TimeRemainingColumn(),
                               rich.TextColumn("{task.fields[info]}"))
      self.bar.start()
      self.task = self.bar.add_task("train", total=total, completed=start, info="")

  def update(self, step: int, row: dict) -> None:
    info = (f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s  "
            f"mfu {row['mfu']:.1%}")
    if self.bar:
      self.bar.update(self.task, completed=step, info=info)
    else:
      print(f"step {step}: {info}", flush=True)

  def close(self) -> None:
    if self.bar:
      self.bar.stop()
