"""IsoFLOP sweeps: plan the points, train each through the real pre-training loop, record them.

    points = plan_sweep([2.5e11, 5e11, 1e12], sizes=5)       # Point per (budget, model size)
    records = run_sweep(points, "W")                          # W/points/<name>/, W/sweep.jsonl

Per budget C (FLOPs), `sizes` models of the family (llama3_jax/scaling/family.py) spread
geometrically over `spread`^-1..`spread` around the expected optimum (N with D =
tokens_per_param * N tokens spends C; 30 by default, from a pilot at 2.5e11 FLOPs whose optimum
lay near 40: these models are limited by their few hundred steps more than Chinchilla's, at
~20); each trains for D = C / flops_per_token tokens (the launcher's MFU count, so the budget is
what MFU says was spent) with a schedule like the report's (§3.2.1: linear warm-up, cosine decay
to 10% of the peak; one batch size per budget), on the embedded corpus, through
`llama3_jax.train.loop.train` in W/points/<name>/. After training the held-out loss
(llama3_jax/eval/perplexity.py, the embedded held-out split) is measured and one line appended
to W/sweep.jsonl: budget, params (the family's matmul count, the N the fits use), total_params,
tokens, flops, loss (held-out, nats per token), bits_per_byte, train_loss, the shape and
timings, and the two-step forecast's columns: accuracy and nll_per_char on an arithmetic
multiple-choice task (llama3_jax/eval/multiple_choice.py). A point with a line is never rerun; a
killed point resumes from its newest checkpoint (the loop does that), so a killed sweep picks up
where it stopped.
"""

import dataclasses
import json
import math
import os
import pathlib
import sys
import time

from llama3_jax.runtime import job
from llama3_jax.scaling import family

SEQ_LEN = 128
BATCH_CHOICES = (1024, 2048, 4096, 8192)   # tokens per step, one per budget
MIN_STEPS = 120                            # the fewest steps of any point of a budget
TASK_EXAMPLES = 200                        # arithmetic multiple-choice questions per model


class SweepStopped(Exception):
  """A point's training was stopped (SIGTERM, Ctrl-C) before its last step."""


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  budget: float          # FLOPs
  config: object         # ModelConfig
  steps: int
  batch_tokens: int

  @property
  def params(self) -> int:
    return family.matmul_params(self.config)

  @property
  def tokens(self) -> int:
    return self.steps * self.batch_tokens

  @property
  def flops(self) -> float:
    return family.flops_per_token(self.config, SEQ_LEN) * self.tokens


def plan_sweep(budgets, sizes: int = 5, spread: float = 2.5, tokens_per_param: float = 30.0,
               min_steps: int = MIN_STEPS) -> list[Point]:
  """The grid: `sizes` models per budget around the expected optimum (see the module doc)."""
  if sizes < 3:
    raise ValueError(f"--sizes={sizes}: a parabola per budget needs at least 3 model sizes")
  points = []
  for budget in sorted(float(b) for b in budgets):
    # N with D = r N tokens at ~6.9 N FLOPs per token (6N plus attention) spends the budget.
    center = math.sqrt(budget / (6.9 * tokens_per_param))
    targets = [center * spread**(2 * i / (sizes - 1) - 1) for i in range(sizes)]
    if targets[0] < family.SMALLEST:
      raise ValueError(f"budget {budget:.3g} FLOPs is too small for the model family: its grid "
                       f"starts at {targets[0]:,.0f} parameters, below the smallest model "
                       f"(~{family.SMALLEST:,}); use budgets of at least "
                       f"{_smallest_budget(spread, tokens_per_param):.2g} FLOPs or a narrower "
                       "spread")
    configs = []
    for target in targets:
      config = family.family_config(target, tolerance=0.05)
      if config not in configs:
        configs.append(config)
    tokens = [budget / family.flops_per_token(c, SEQ_LEN) for c in configs]
    fitting = [b for b in BATCH_CHOICES if min(tokens) / b >= min_steps]
    if not fitting:
      raise ValueError(f"budget {budget:.3g} FLOPs is too small: its largest model would train "
                       f"{min(tokens) / BATCH_CHOICES[0]:.0f} steps of {BATCH_CHOICES[0]} tokens "
                       f"(fewer than {min_steps}); raise the budget")
    batch = fitting[-1]
    for config, d in zip(configs, tokens):
      name = f"c{budget:.2e}_n{family.matmul_params(config)}".replace("+", "")
      points.append(Point(name, budget, config, max(1, round(d / batch)), batch))
  return points


def _smallest_budget(spread: float, tokens_per_param: float) -> float:
  n = family.SMALLEST * spread
  return 6.9 * tokens_per_param * n * n


def point_config(point: Point, seed: int = 0):
  """The launcher config (llama3_jax/train/config.py schema) that trains `point`."""
  from llama3_jax.train.config import default_config
  c = default_config()
  c.model.update(family.model_overrides(point.config))
  c.mesh.fsdp = -1
  c.data.streams = 4
  # Peak LR 1e-2: tiny models in a few hundred steps (a pilot at 2.5e11 FLOPs: held-out loss
  # 3.13 at 1e-2 against 3.23 at 3e-3 for the 42K model).
  c.train.update(steps=point.steps, seed=seed, peak_lr=1e-2, floor_ratio=0.1,
                 warmup_tokens=None, warmup_fraction=0.05, anneal_tokens=0,
                 stages=(dict(until_tokens=None, batch_tokens=point.batch_tokens,
                              seq_len=SEQ_LEN),))
  # A checkpoint every quarter: a killed point loses at most a quarter of its steps.
  c.checkpoint.update(every_steps=max(1, point.steps // 4), max_to_keep=1, async_save=False)
  c.log.every_steps = max(1, point.steps // 4)
  c.resilience.straggler_factor = 1e9   # steps of tiny models jitter: not stragglers
  return c


def read_records(path) -> list[dict]:
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records, cut = [], 0
  for line in path.read_text().splitlines():
    if line.strip():
      try:
        records.append(json.loads(line))
      except ValueError:   # a line cut by a kill mid-write: that point runs again
        cut += 1
  if cut:
    print(f"{path}: {cut} cut line(s) skipped (written when a run was killed; the sweep trains "
          "those points again)", file=sys.stderr)
  return records


def train_and_measure(point: Point, workdir: pathlib.Path, seed: int, peak_flops: float | None
                      ) -> dict:
  """Trains `point` in `workdir` (resuming), then measures its held-out loss."""
  from llama3_jax.eval.perplexity import evaluate, heldout_rows
  from llama3_jax.train.config import run_config
  from llama3_jax.train.loop import train
  cfg = point_config(point, seed)
  if peak_flops:
    cfg.mfu.peak_flops = peak_flops
  start = time.perf_counter()
  summary = train(run_config(cfg), workdir)
  train_s = time.perf_counter() - start
  if summary.get("stopped_by"):   # SIGTERM / Ctrl-C: checkpointed, not finished: no record
    raise SweepStopped(f"stopped by {summary['stopped_by']} during {point.name} (checkpoint "
                       f"saved at step {summary['steps']}); run again to resume")
  model = _read_model(workdir)
  result = evaluate(model, heldout_rows(seq_len=SEQ_LEN))
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {"loss": result["loss"], "bits_per_byte": result["bits_per_byte"],
          "heldout": {name: s["loss"] for name, s in result["per_source"].items()},
          "train_loss": rows[-1]["loss"] if rows else summary.get("loss"),
          "tokens_per_s": summary.get("tokens_per_s"), "train_s": train_s,
          **task_columns(model, workdir)}


def task_columns(model, workdir) -> dict:
  """The two-step forecast's columns: the arithmetic multiple-choice task's accuracy and the
  correct answers' NLL per character (llama3_jax/eval/multiple_choice.py)."""
  from llama3_jax.checkpoint.model import run_tokenizer
  from llama3_jax.eval import multiple_choice, tasks
  examples = tasks.arithmetic_task(TASK_EXAMPLES)
  result = multiple_choice.metrics(examples, multiple_choice.loglikelihoods(
      model, run_tokenizer(workdir), examples))
  return {"accuracy": result["acc"], "nll_per_char": result["gold_nll_per_char"],
          "task": f"arithmetic multiple choice, {result['n']} examples, chance "
                  f"{result['chance']:.2f}"}


def _read_model(workdir):
  """A point's trained model, whole on every device of the job (a tiny model; every process of a
  multi-process job scores it alike)."""
  from llama3_jax.checkpoint.model import init_model_config, load_model
  from llama3_jax.infer.placement import Placement
  from llama3_jax.sharding import MeshConfig
  placement = Placement.make(MeshConfig(data=-1, fsdp=1), init_model_config(workdir))
  return load_model(workdir, mesh=placement.mesh, rules=placement.rules)[1]


def add_task_columns(workdir, out=sys.stdout) -> int:
  """Measures the task columns for the points of W/sweep.jsonl that lack them (their models
  are read from W/points/<name>); rewrites the file atomically. Returns how many it added."""
  workdir = pathlib.Path(workdir)
  path = workdir / "sweep.jsonl"
  records = read_records(path)
  missing = [r for r in records if r.get("accuracy") is None
             and (workdir / "points" / r["name"]).exists()]
  for r in missing:
    r.update(task_columns(_read_model(workdir / "points" / r["name"]),
                          workdir / "points" / r["name"]))
  def rewrite():   # every process measured; process 0 writes
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
    print(f"sweep: measured the multiple-choice task on {len(missing)} points", file=out,
          flush=True)
  if missing:
    job.write_once(f"{path} with task columns", rewrite)
  return len(missing)


def run_sweep(points: list[Point], workdir, *, seed: int = 0, measure=train_and_measure,
              peak_flops: float | None = None, out=sys.stdout) -> list[dict]:
  """Runs every point without a line in W/sweep.jsonl; returns all the sweep's records.

  `measure(point, point_workdir, seed, peak_flops) -> dict` (with "loss") trains and evaluates
  one point (tests pass a stand-in)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / "sweep.jsonl"
  job.write_once(f"{path} without a cut line", lambda: _drop_cut_line(path))
  done = {r["name"] for r in read_records(path)}
  todo = [p for p in points if p.name not in done]
  if done:
    print(f"sweep: {len(points) - len(todo)} of {len(points)} points already done in {path}",
          file=out, flush=True)
  started, walls = time.perf_counter(), []
  for i, point in enumerate(todo):
    start = time.perf_counter()
    measured = measure(point, workdir / "points" / point.name, seed, peak_flops)
    record = {"name": point.name, "budget": point.budget, "params": point.params,
              "total_params": family.total_params(point.config), "tokens": point.tokens,
              "flops": point.flops, "steps": point.steps, "batch_tokens": point.batch_tokens,
              "seq_len": SEQ_LEN, "seed": seed, **family.describe(point.config), **measured,
              "wall_s": time.perf_counter() - start}
    job.write_once(f"{path}: {point.name}", lambda: _append(path, record))
    walls.append(record["wall_s"])
    elapsed = time.perf_counter() - started
    eta = _eta(todo[:i + 1], walls, todo[i + 1:])
    print(f"sweep {_bar((i + 1) / len(todo))} {i + 1}/{len(todo)} {point.name}: held-out loss "
          f"{record['loss']:.4f} ({record['wall_s']:.0f} s); elapsed {elapsed / 60:.1f} min, "
          f"ETA {eta / 60:.1f} min", file=out, flush=True)
  return read_records(path)


def _append(path: pathlib.Path, record: dict) -> None:
  """One whole line per point; fsync so a kill keeps it."""
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _eta(done: list[Point], walls: list[float], todo: list[Point]) -> float:
  """Seconds left: wall = a + b * steps + c * FLOPs fitted to the points done (start-up, the
  per-step overhead that dominates tiny models, compute), FLOP-weighted until that is fitted."""
  import numpy as np
  if not todo:
    return 0.0
  features = lambda ps: np.array([[1.0, p.steps, p.flops / 1e12] for p in ps])  # noqa: E731
  if len(done) >= 4:
    coef, *_ = np.linalg.lstsq(features(done), np.array(walls), rcond=None)
    if np.all(coef >= 0):
      return float(features(todo).dot(coef).sum())
  return sum(walls) * sum(p.flops for p in todo) / sum(p.flops for p in done)


def _drop_cut_line(path: pathlib.Path) -> None:
  """A kill during a write can leave a last line without its newline: cut it off, so the next
  line starts on its own (that point runs again)."""
  if path.exists():
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
      path.write_bytes(data[:data.rfind(b"\n") + 1])


def _bar(fraction: float, width: int = 20) -> str:
  filled = round(fraction * width)
  return "[" + "#" * filled + "-" * (width - filled) + "]"
