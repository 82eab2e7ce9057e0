"""Curation and tokenization as staged tasks: the same bytes for any layout, executor or crash.

A planted corpus over 8 files: exact copies, near copies with 1%, 2%, 4% and 8% of their
words replaced (many in another file than their source), boilerplate lines, URL versions.
  - 1 task == 4 tasks == the single-process reference, byte for byte (fast);
  - the near-duplicate stage against a brute-force Jaccard of every pair: >= 95% of pairs
    at Jaccard >= threshold + 0.1 caught, and nothing removed without a similar partner;
  - a changed input is redone, never mixed in; bad input and a missing Ray are one line;
  - slow: SIGKILL mid-stage (in the driver and in a pool worker) then relaunch; Ray on a
    local 2-CPU cluster (curation, and tokenized shards that train to the same loss); the
    generated SLURM files run through a stand-in `sbatch`.
"""

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse

from llama3_jax.data.curation import CurationConfig, curate, executors, minhash
from llama3_jax.data.curation.hashing import hash_words, words
from llama3_jax.data.curation.reference import curate_in_memory
from llama3_jax.data.curation.tasks import FAULT_ENV, TaskFailed
from llama3_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOILER = ["subscribe to our newsletter today", "all rights reserved by the site owner",
          "skip to main content", "share this page with your friends"]
RATES = (0.01, 0.02, 0.04, 0.08)


@dataclasses.dataclass
class Planted:
  path: pathlib.Path
  pairs: list          # (source id, copy id, edit rate; 0.0 = exact)
  file_of: dict        # id -> input file index
  ids: list            # ids in input order


def make_corpus(root: pathlib.Path, base: int = 200, per_rate: int = 15, seed: int = 0):
  rng = np.random.default_rng(seed)
  letters = list("abcdefghijklmnopqrstuvwxyz")
  vocab = sorted({"".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(4000)})
  docs = {}

  def text(n_words):
    ws = list(rng.choice(vocab, n_words))
    cut = np.cumsum(rng.integers(8, 16, n_words))
    return "\n".join(" ".join(ws[a:b]) for a, b in zip(np.r_[0, cut], cut) if a < n_words)

  for k in range(base):
    t = text(int(rng.integers(120, 220)))
    if k % 3 == 0:                               # boilerplate at the top
      t = f"{BOILER[k % len(BOILER)]}\n{t}"
    docs[f"d{k}"] = {"id": f"d{k}", "text": t}
  pairs, sources = [], list(rng.permutation(base))
  for rate in (0.0,) + RATES:
    for _ in range(per_rate):
      src = f"d{sources.pop()}"
      flat = docs[src]["text"].split(" ")        # lines stay: words within them change
      for pos in rng.choice(len(flat), int(round(rate * len(flat))), replace=False):
        flat[pos] = flat[pos].replace(flat[pos].split("\n")[-1], str(rng.choice(vocab)))
      new = f"c{len(pairs)}"
      docs[new] = {"id": new, "text": " ".join(flat)}
      pairs.append((src, new, rate))
  for g in range(8):                             # one URL, two versions, the newer kept
    for v in range(2):
      new = f"u{g}_{v}"
      docs[new] = {"id": new, "text": text(100), "url": f"https://example.org/{g}",
                   "timestamp": 1.7e9 + v}
  order = list(rng.permutation(list(docs)))
  files = [order[k::8] for k in range(8)]
  root.mkdir(parents=True, exist_ok=True)
  for k, ids in enumerate(files):
    (root / f"part-{k}.jsonl").write_text(
        "".join(json.dumps(docs[d]) + "\n" for d in ids), encoding="utf-8")
  file_of = {d: k for k, ids in enumerate(files) for d in ids}
  return Planted(root, pairs, file_of, [d for ids in files for d in ids])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  return make_corpus(tmp_path_factory.mktemp("planted") / "in")


def small_config(**changes) -> CurationConfig:
  """Several key ranges and line buckets on a small corpus, so the range units are tested."""
  base = CurationConfig(workers=1)
  return dataclasses.replace(base, **{
      "partitions": dataclasses.replace(base.partitions, docs_per_unit=60),
      "line_dedup": dataclasses.replace(base.line_dedup, bucket_docs=120, max_count=4),
      **changes})


def outputs(out: pathlib.Path) -> dict:
  """Every file a run leaves outside its work directory: name -> bytes."""
  return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
          if p.is_file() and "_work" not in p.parts}


def kept_ids(out: pathlib.Path) -> set:
  return {json.loads(line)["id"] for p in out.glob("*.jsonl")
          for line in p.read_text(encoding="utf-8").splitlines()}


@pytest.fixture(scope="module")
def reference(planted, tmp_path_factory):
  out = tmp_path_factory.mktemp("reference")
  curate_in_memory(str(planted.path), str(out), small_config())
  return outputs(out)


def test_one_task_equals_four_tasks_equals_the_reference(planted, reference, tmp_path):
  assert sum(planted.file_of[a] != planted.file_of[b] for a, b, _ in planted.pairs) > 50
  logs = []
  curate(str(planted.path), str(tmp_path / "one"), small_config(), tasks=1)
  curate(str(planted.path), str(tmp_path / "four"), small_config(), tasks=4, log=logs.append)
  assert outputs(tmp_path / "one") == outputs(tmp_path / "four") == reference
  stats = json.loads(reference["stats.json"])
  assert stats["removed"]["url_dedup"] == 8 and stats["removed"]["minhash"] >= 45
  assert stats["line_dedup_buckets"] >= 2 and stats["lines_removed"] > 50
  assert any(line.startswith("buckets: tasks 4/4 done") for line in logs)
  stage_stats = json.loads((tmp_path / "four/_work/stats/buckets.json").read_text())
  with_shingles = json.loads((tmp_path / "four/_work/index.json").read_text())["with_shingles"]
  assert stage_stats["units"] == 32 * -(-with_shingles // 60) > 32     # bands x key ranges
  assert stage_stats["pairs"] > 0
  # A relaunch of a finished run runs nothing but the stats summary, and changes nothing.
  logs.clear()
  curate(str(planted.path), str(tmp_path / "four"), small_config(), tasks=4, log=logs.append)
  assert all("already done" in line for line in logs if not line.startswith("stats:"))
  assert outputs(tmp_path / "four") == reference


def brute_force_jaccard(planted: Planted, shingle_size: int = 5):
  """Exact Jaccard of every pair of documents' shingle sets (the sets MinHash estimates)."""
  texts = {}
  for p in sorted(planted.path.glob("*.jsonl")):
    for line in p.read_text(encoding="utf-8").splitlines():
      record = json.loads(line)
      texts[record["id"]] = record["text"]
  ids = planted.ids
  sets = [minhash.shingles(hash_words(words(texts[d])), shingle_size) for d in ids]
  vocab, cols = np.unique(np.concatenate(sets), return_inverse=True)
  rows = np.repeat(np.arange(len(ids)), [len(s) for s in sets])
  a = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), (len(ids), len(vocab)))
  inter = (a @ a.T).toarray()                                        # (N, N) shared shingles
  size = np.array([len(s) for s in sets], float)
  jac = inter / (size[:, None] + size[None, :] - inter)
  np.fill_diagonal(jac, 0.0)
  return ids, jac


def test_near_duplicates_against_brute_force_jaccard(planted, tmp_path):
  cfg = small_config(url_dedup=dataclasses.replace(CurationConfig().url_dedup, enabled=False),
                     line_dedup=dataclasses.replace(CurationConfig().line_dedup, enabled=False),
                     filters=dataclasses.replace(CurationConfig().filters, dup_ngrams=(),
                                                 kl_enabled=False))
  curate(str(planted.path), str(tmp_path), cfg, tasks=3)
  kept = kept_ids(tmp_path)
  ids, jac = brute_force_jaccard(planted)
  position = {d: i for i, d in enumerate(ids)}
  threshold = cfg.minhash.threshold
  high = np.argwhere(np.triu(jac) >= threshold + 0.1)
  caught = [not (ids[i] in kept and ids[j] in kept) for i, j in high]
  print(f"pairs at Jaccard >= {threshold + 0.1}: {len(high)}, caught {np.mean(caught):.3f}")
  for rate in (0.0,) + RATES:
    group = [(a, b) for a, b, r in planted.pairs if r == rate]
    j = np.mean([jac[position[a], position[b]] for a, b in group])
    recall = np.mean([b not in kept for _, b in group])
    print(f"edit rate {rate:.0%}: mean Jaccard {j:.2f}, recall {recall:.2f}")
  assert len(high) >= 40 and np.mean(caught) >= 0.95
  removed = [position[d] for d in ids if d not in kept]
  assert removed and all(jac[i].max() >= threshold - 0.15 for i in removed)   # precision
  # Pairs far below the threshold survive: 8% edits (Jaccard ~0.5) are mostly kept.
  eight = [b for _, b, r in planted.pairs if r == 0.08]
  assert np.mean([b in kept for b in eight]) >= 0.8


def test_a_changed_input_is_redone_not_mixed(planted, tmp_path):
  corpus = tmp_path / "in"
  corpus.mkdir()
  for p in planted.path.glob("*.jsonl"):
    (corpus / p.name).write_bytes(p.read_bytes())
  curate(str(corpus), str(tmp_path / "out"), small_config(), tasks=2)
  part = corpus / "part-3.jsonl"
  lines = part.read_text(encoding="utf-8").splitlines()
  record = json.loads(lines[0])
  record["text"] = "an entirely new document " * 30
  part.write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n", encoding="utf-8")
  logs = []
  curate(str(corpus), str(tmp_path / "out"), small_config(), tasks=2, log=logs.append)
  assert any("input changed since the last launch" in line and "part-3.jsonl" in line
             for line in logs)
  assert not any(line.startswith("scan: tasks 2/2") for line in logs)   # one file rescanned
  curate_in_memory(str(corpus), str(tmp_path / "fresh"), small_config())
  assert outputs(tmp_path / "out") == outputs(tmp_path / "fresh")


def test_failures_name_the_input_and_the_relaunch(planted, tmp_path, monkeypatch):
  from llama3_jax.data.curation import passes
  scan = passes.scan_file

  def broken(path):
    if path.endswith("part-5.jsonl"):
      raise RuntimeError("disk on fire")
    return scan(path)
  monkeypatch.setattr(passes, "scan_file", broken)
  with pytest.raises(TaskFailed, match=r"stage scan task 1/4 failed on \S*part-5\.jsonl: "
                     r"RuntimeError: disk on fire(.|\n)*relaunch: CMD"):
    curate(str(planted.path), str(tmp_path), small_config(), tasks=4, relaunch="CMD")
  done = sorted(p.name for p in (tmp_path / "_work/scan/done").iterdir())
  assert "000005.json" not in done and len(done) >= 1      # finished tasks kept their markers
  monkeypatch.setattr(passes, "scan_file", scan)
  strict = small_config(read=dataclasses.replace(CurationConfig().read, strict=True))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "x.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
  with pytest.raises(UserError, match=r"x\.jsonl:2: bad json .*; then relaunch: CMD$"):
    curate(str(bad), str(tmp_path / "out"), strict, tasks=2, relaunch="CMD")


def test_missing_ray_and_unreachable_cluster_are_one_line(monkeypatch, tmp_path):
  with monkeypatch.context() as patch:
    patch.setitem(sys.modules, "ray", None)                  # import ray -> ImportError
    with pytest.raises(UserError, match="needs Ray, which is not installed.*pip install"):
      executors.start_ray()
  monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
  with pytest.raises(UserError, match=r"no Ray cluster at RAY_ADDRESS='127\.0\.0\.1:1'"):
    executors.start_ray()
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.jsonl").write_text('{"text": "hello world"}\n')
  result = subprocess.run([sys.executable, "-m", "experiments.curate", "--input",
                           str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                           "--executor", "ray"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}, timeout=120)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.count("\n") == 1 and "no Ray cluster at" in result.stderr


def test_slurm_files_are_job_arrays_chained_by_dependencies(planted, tmp_path):
  assert curate(str(planted.path), str(tmp_path), small_config(), executor="slurm",
                tasks=3) == {}
  folder = tmp_path / "_work" / "slurm"
  files = sorted(p.name for p in folder.glob("*.sbatch"))
  assert [f.split("-", 1)[1] for f in files] == [
      "scan.sbatch", "index.sbatch", "url.sbatch", "buckets.sbatch", "clusters.sbatch",
      "lines.sbatch", "line_counts.sbatch", "score.sbatch", "kl.sbatch", "write.sbatch",
      "stats.sbatch"]
  scan = (folder / files[0]).read_text()
  assert "#SBATCH --array=0-2" in scan and "--stage scan" in scan and "--world 3" in scan
  assert "#SBATCH --array=0-0" in (folder / "01-index.sbatch").read_text()
  submit = (folder / "submit.sh").read_text()
  assert submit.count("sbatch --parsable") == 11
  assert submit.count("--dependency=afterok:$previous") == 11   # the first has none: empty
  assert not (tmp_path / "stats.json").exists()                 # nothing ran here


# --- slow: crashes, Ray, SLURM --------------------------------------------------------------

def run_cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.curate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, **(env or {})})


def cli_args(planted_path, out, *extra):
  return ["--input", str(planted_path), "--out", str(out), "--config.partitions.docs_per_unit=60",
          "--config.line_dedup.bucket_docs=120", "--config.line_dedup.max_count=4", *extra]


@pytest.mark.slow
def test_sigkill_mid_stage_then_relaunch_gives_the_same_bytes(planted, reference, tmp_path):
  out = tmp_path / "out"
  # The driver itself killed (tasks run in-process) after the 6th buckets unit of 160.
  killed = run_cli(*cli_args(planted.path, out, "--workers", "1", "--tasks", "4"),
                   env={FAULT_ENV: "buckets:5"})
  assert killed.returncode == -signal.SIGKILL
  scanned = {p: p.stat().st_mtime_ns for p in (out / "_work/scan/done").iterdir()}
  assert len(scanned) == 8 and not (out / "stats.json").exists()
  # A pool worker killed in the score stage: the driver says so in one line, exit 2.
  broken = run_cli(*cli_args(planted.path, out, "--workers", "2", "--tasks", "4"),
                   env={FAULT_ENV: "score:2"})
  assert broken.returncode == 2 and "process died" in broken.stderr, broken.stderr
  assert not re.search(r"buckets: \d+ units already done", broken.stdout)   # finished now
  relaunched = run_cli(*cli_args(planted.path, out, "--workers", "2", "--tasks", "4"))
  assert relaunched.returncode == 0, relaunched.stderr
  assert re.search(r"buckets: \d+ units already done", relaunched.stdout)
  assert {p: p.stat().st_mtime_ns for p in scanned} == scanned     # scan never ran again
  assert outputs(out) == reference


@pytest.mark.slow
def test_ray_executor_curates_and_tokenizes_as_local(planted, reference, tmp_path):
  pytest.importorskip("ray")
  import ray
  from llama3_jax.data.prepare import prepare
  from llama3_jax.data.tokenizers import train_sentencepiece
  executors.start_ray(num_cpus=2)
  try:
    curate(str(planted.path), str(tmp_path / "ray"), small_config(), executor="ray", tasks=2)
    assert outputs(tmp_path / "ray") == reference
    texts = [json.loads(line)["text"] for p in sorted((tmp_path / "ray").glob("*.jsonl"))
             for line in p.read_text().splitlines()]
    tok = train_sentencepiece(texts, 400, tmp_path / "tok.model")
    prepare(tmp_path / "ray", tok.path, tmp_path / "data_ray", executor="ray", tasks=2)
  finally:
    ray.shutdown()
  prepare(tmp_path / "ray", tok.path, tmp_path / "data_local", workers=2)
  shards = lambda d: {k: v for k, v in outputs(tmp_path / d).items()   # noqa: E731
                      if k.endswith((".array_record", "manifest.json"))}
  assert shards("data_ray") == shards("data_local") and len(shards("data_ray")) == 9
  manifest = json.loads((tmp_path / "data_local/manifest.json").read_text())
  assert len(manifest["sources"]["general"]["shards"]) == 8

  losses = loader_losses([tmp_path / "data_ray", tmp_path / "data_local"])
  assert losses[0] == losses[1] and len(losses[0]) == 3 and np.isfinite(losses[0]).all()


def loader_losses(data_dirs, steps: int = 3) -> list:
  """Per directory, the training losses of a tiny model (one compiled step for all) over
  `steps` batches the loader reads from it."""
  from llama3_jax.data.loader import Loader
  from llama3_jax.model import ModelConfig
  from llama3_jax.optim.schedules import Stage
  from llama3_jax.sharding import MeshConfig
  from llama3_jax.train.setup import setup
  from tests.helpers import LR, OPTIMIZER
  model = ModelConfig(vocab_size=512, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=6, ffn_dim=40)
  s = setup(model, MeshConfig(fsdp=8), optimizer=OPTIMIZER)
  fields = ("inputs", "targets", "segment_ids", "loss_mask")   # what the step reads
  out = []
  for data_dir in data_dirs:
    state, loader, losses = s.init_state(), Loader(data_dir, seed=0, streams=8,
                                                   vocab_size=512), []
    for _ in range(steps):
      batch = loader.next_batch(0, Stage(None, 8 * 32, 32))
      state, metrics = s.fns.train(state, {k: batch[k] for k in fields}, LR)
      losses.append(float(metrics["loss"]))
    out.append(losses)
  return out


@pytest.mark.slow
def test_generated_slurm_files_run_to_the_same_bytes(planted, reference, tmp_path):
  """submit.sh through a stand-in sbatch that runs each array task in order, as SLURM would."""
  curate(str(planted.path), str(tmp_path / "out"), small_config(), executor="slurm", tasks=2)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(
      "#!/usr/bin/env bash\nset -e\nfile=${@: -1}\n"
      "last=$(sed -n 's/^#SBATCH --array=0-//p' \"$file\")\n"
      "for i in $(seq 0 $last); do SLURM_ARRAY_TASK_ID=$i bash \"$file\" >&2; done\n"
      "echo $RANDOM\n")
  (bin_dir / "sbatch").chmod(0o755)
  result = subprocess.run(["bash", str(tmp_path / "out/_work/slurm/submit.sh")],
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert outputs(tmp_path / "out") == reference


def test_sorted_quantile_is_numpys_quantile_of_the_concatenation():
  from llama3_jax.data.curation.quantile import sorted_quantile
  rng = np.random.default_rng(0)
  for trial in range(300):
    n = int(rng.integers(1, 300))
    x = rng.normal(size=n) * rng.choice([1e-3, 1.0, 10.0]) + rng.choice([0.0, 5.0])
    x = np.round(x, 1) if trial % 4 == 0 else x            # ties
    k = int(rng.integers(1, 6))
    owner = rng.integers(0, k, n)
    parts = [np.sort(x[owner == i]) for i in range(k)]      # some parts empty
    q = float(rng.choice([0.99, 0.5, 0.999, rng.random()]))
    assert sorted_quantile(parts, q) == np.quantile(x, q), (n, q)
