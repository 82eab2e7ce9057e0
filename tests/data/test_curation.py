"""Data curation (report §3.1.1) on a generated corpus with planted duplicates and junk.

The corpus is random-word text from a fixed vocabulary (seeded), with planted exact and near
duplicates (1-4 words changed in a ~200-word document), hard negatives that share 50-70% of a
document (true Jaccard 0.3-0.55, must survive), URL versions with timestamps, boilerplate lines,
repetitive, dirty and foreign-alphabet documents. Each stage is run alone against its ground
truth, and the whole pipeline through the CLI. Stated bars: near-duplicate recall >= 0.9 and
precision >= 0.95 (measured: 0.99 and 1.0); both bars are shown to fail when the threshold is
1.0 (recall 0.33) or 0.3 (precision 0.76). No JAX is used here.
"""

import dataclasses
import gzip
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from llama3_jax.data.curation import CurationConfig, CurationInputError, curate
from llama3_jax.data.curation import filters, lines, minhash
from llama3_jax.data.curation.hashing import hash_words, words
from llama3_jax.data.curation.langid import LangId
from llama3_jax.data.curation.quality import QualityModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOILER = ["copyright acme corp all rights reserved", "click here to subscribe to our newsletter",
          "share this page on social media", "terms of use privacy policy cookie settings",
          "skip to main content", "posted by admin in uncategorized",
          "leave a comment cancel reply", "related posts you may also like"]
EDGE6, EDGE7 = "edge line seen in six documents", "edge line seen in seven documents"
DIRTY = ["badword", "naughtyterm", "very rude phrase"]


@dataclasses.dataclass
class Corpus:
  path: pathlib.Path
  ids: set
  dups: set            # exact + near duplicates (each after its source)
  exact: set
  negatives: set       # share 50-70% of a document; must be kept
  url_groups: list     # [(ids of one URL in input order, id to keep)]
  boiler_only: set
  repetitive: set
  dirty_heavy: set
  dirty_light: set
  outliers: set
  jaccard: dict        # id -> true shingle Jaccard with its source (dups and negatives)


def _shingle_jaccard(a: str, b: str, n: int = 5) -> float:
  def grams(t):
    w = words(t)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
  x, y = grams(a), grams(b)
  return len(x & y) / len(x | y)


def _make_corpus(root: pathlib.Path) -> Corpus:
  rng = np.random.default_rng(1234)
  letters = list("abcdefghijklmnopqrstuvwxyz")
  vocab = sorted({"".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(3500)})
  vocab = [w for w in vocab if w not in " ".join(BOILER + DIRTY + [EDGE6, EDGE7]).split()]

  def text_lines(n_words, pool=vocab):
    ws = list(rng.choice(pool, n_words))
    out, i = [], 0
    while i < len(ws):
      k = int(rng.integers(8, 16))
      out.append(" ".join(ws[i:i + k]))
      i += k
    return out

  docs, n = {}, [0]

  def add(lines_, **extra):
    n[0] += 1
    docs[f"d{n[0]}"] = {"id": f"d{n[0]}", "text": "\n".join(lines_), **extra}
    return f"d{n[0]}"

  base = [add(text_lines(int(rng.integers(150, 250)))) for _ in range(500)]
  order = list(rng.permutation(base))
  sources, edge_carriers = order[:180], order[180:193]
  for i, doc_id in enumerate(edge_carriers):
    docs[doc_id]["text"] += "\n" + (EDGE6 if i < 6 else EDGE7)
  for doc_id in order[193:]:
    if rng.random() < 0.45:        # boilerplate on top and/or at the bottom
      picks = rng.choice(BOILER, int(rng.integers(1, 3)), replace=False)
      docs[doc_id]["text"] = "\n".join([picks[0], docs[doc_id]["text"], *picks[1:]])
  boiler_only = {add(list(rng.choice(BOILER, 2, replace=False))) for _ in range(5)}
  repetitive = set()
  for _ in range(10):
    sentence = " ".join(rng.choice(vocab, 12))
    repetitive.add(add([sentence] * 15 + text_lines(30)))
  dirty_heavy, dirty_light = set(), set()
  for _ in range(8):
    ws = list(rng.choice(vocab, 180))
    for pos in rng.choice(180, 18, replace=False):
      ws[pos] = str(rng.choice(DIRTY))
    dirty_heavy.add(add([" ".join(ws)]))
    ws = list(rng.choice(vocab, 180))
    ws[int(rng.integers(180))] = DIRTY[0]
    dirty_light.add(add([" ".join(ws)]))
  greek = list("αβγδεζηθικλμνξοπρστυφχψω")
  greek_vocab = ["".join(rng.choice(greek, rng.integers(3, 9))) for _ in range(500)]
  outliers = {add(text_lines(200, greek_vocab)) for _ in range(6)}
  for _ in range(4):
    chars = [chr(c) for c in rng.integers(0x21, 0x250, 1500)]
    outliers.add(add(["".join(chars[i:i + 80]) for i in range(0, 1500, 80)]))

  later, exact, dups, negatives, jaccard = [], set(), set(), set(), {}
  for i, src in enumerate(sources):
    ws = docs[src]["text"].split("\n")
    if i < 40:                                   # exact copy
      new = add(ws)
      exact.add(new)
    elif i < 120:                                # near copy: 1-4 words replaced
      flat = " ".join(ws).split(" ")
      for pos in rng.choice(len(flat), int(rng.integers(1, 5)), replace=False):
        flat[pos] = str(rng.choice(vocab))
      new = add([" ".join(flat)])
    else:                                        # hard negative: keeps 50% or 70% of the lines
      keep = int(len(ws) * (0.5 if i < 150 else 0.7))
      new = add(ws[:keep] + text_lines(len(" ".join(ws[keep:]).split())))
      negatives.add(new)
    if i < 120:
      dups.add(new)
    jaccard[new] = _shingle_jaccard(docs[src]["text"], docs[new]["text"])
    later.append(new)

  url_groups, url_docs = [], []
  for g in range(30):
    group = [add(text_lines(int(rng.integers(100, 200)))) for _ in range(3)]
    stamps = rng.permutation(3) * 86400.0 + 1.6e9
    for doc_id, t in zip(group, stamps):
      docs[doc_id]["url"] = f"https://example.org/page/{g}#frag{doc_id}"
      if g % 3 == 0:
        docs[doc_id]["timestamp"] = float(t)
      elif g % 3 == 1:                           # ISO dates under another field name
        docs[doc_id]["date"] = np.datetime_as_string(np.datetime64(int(t), "s")) + "Z"
    url_docs += group
  for doc_id in base[::3]:
    docs[doc_id]["url"] = f"https://example.org/unique/{doc_id}"

  early = [d for d in docs if d not in set(later) | set(url_docs)]
  early = list(rng.permutation(early))
  files = [early[0::3], early[1::3], early[2::3], later]
  for doc_id in url_docs:                        # URL versions land anywhere
    files[int(rng.integers(4))].insert(int(rng.integers(len(files[0]))), doc_id)
  position = {d: (f, i) for f, ids in enumerate(files) for i, d in enumerate(ids)}
  for g in range(30):
    group = sorted(url_docs[3 * g:3 * g + 3], key=position.get)
    stamped = [d for d in group if "timestamp" in docs[d] or "date" in docs[d]]
    newest = (max(stamped, key=lambda d: docs[d].get("timestamp")
                  or np.datetime64(docs[d]["date"][:-1]).astype("int64")) if stamped else group[0])
    url_groups.append((group, newest))

  root.mkdir(parents=True, exist_ok=True)
  for k, ids in enumerate(files):
    payload = "".join(json.dumps(docs[d], ensure_ascii=False) + "\n" for d in ids).encode()
    if k == 2:
      (root / f"part-{k}.jsonl.gz").write_bytes(gzip.compress(payload, mtime=0))
    else:
      (root / f"part-{k}.jsonl").write_bytes(payload)
  return Corpus(root, set(docs), dups, exact, negatives, url_groups, boiler_only, repetitive,
                dirty_heavy, dirty_light, outliers, jaccard)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return _make_corpus(tmp_path_factory.mktemp("corpus") / "in")


def _config(*stages, **sections) -> CurationConfig:
  """Only the named stages on (url, minhash, lines, dup_ngram, kl), in this process."""
  base = CurationConfig(workers=1)
  return dataclasses.replace(
      base,
      url_dedup=dataclasses.replace(base.url_dedup, enabled="url" in stages),
      minhash=dataclasses.replace(base.minhash, enabled="minhash" in stages),
      line_dedup=dataclasses.replace(base.line_dedup, enabled="lines" in stages),
      filters=dataclasses.replace(base.filters, kl_enabled="kl" in stages,
                                  dup_ngrams=base.filters.dup_ngrams if "dup_ngram" in stages
                                  else ()),
      **sections)


def _run(corpus, out, cfg):
  stats = curate(str(corpus.path), str(out), cfg)
  kept = {}
  for f in sorted(out.rglob("*.jsonl")):
    for line in f.read_text(encoding="utf-8").splitlines():   # also checks line-break escapes
      record = json.loads(line)
      kept[record["id"]] = record
  assert stats["kept"] == len(kept)
  assert stats["input_lines"] == (stats["kept"] + sum(stats["removed"].values())
                                  + sum(stats["skipped_lines"].values()))
  return stats, kept


def test_generator_plants_what_it_claims(corpus):
  near = corpus.dups - corpus.exact
  assert len(corpus.exact) == 40 and len(near) == 80 and len(corpus.negatives) == 60
  assert min(corpus.jaccard[d] for d in corpus.exact) == 1.0
  assert min(corpus.jaccard[d] for d in near) > 0.72          # 1-4 changed words
  assert max(corpus.jaccard[d] for d in corpus.negatives) < 0.6


def test_url_dedup_keeps_the_newest(corpus, tmp_path):
  stats, kept = _run(corpus, tmp_path, _config("url"))
  assert stats["removed"]["url_dedup"] == 60
  for group, newest in corpus.url_groups:
    assert [d for d in group if d in kept] == [newest]
  assert set(kept) == corpus.ids - {d for g, _ in corpus.url_groups for d in g} | {
      newest for _, newest in corpus.url_groups}


def _near_dup_scores(corpus, out, threshold):
  cfg = _config("minhash")
  cfg = dataclasses.replace(cfg, minhash=dataclasses.replace(cfg.minhash, threshold=threshold))
  _, kept = _run(corpus, out, cfg)
  removed = corpus.ids - set(kept)
  recall = len(removed & corpus.dups) / len(corpus.dups)
  precision = len(removed & corpus.dups) / max(len(removed), 1)
  return recall, precision, removed


def test_near_duplicates_recall_and_precision(corpus, tmp_path):
  recall, precision, removed = _near_dup_scores(corpus, tmp_path / "a", 0.7)
  print(f"near-dup recall {recall:.3f} precision {precision:.3f}")
  assert recall >= 0.9 and precision >= 0.95
  assert corpus.exact <= removed and not removed & corpus.negatives
  # The bars are meaningful: a threshold of 1.0 finds only exact copies (recall 40/120) and
  # one of 0.3 also removes the hard negatives.
  recall_strict, _, _ = _near_dup_scores(corpus, tmp_path / "b", 1.0)
  _, precision_loose, _ = _near_dup_scores(corpus, tmp_path / "c", 0.3)
  print(f"threshold 1.0: recall {recall_strict:.3f}; 0.3: precision {precision_loose:.3f}")
  assert recall_strict < 0.9 and precision_loose < 0.95


def test_signature_estimates_jaccard_and_is_seeded():
  rng = np.random.default_rng(0)
  a, b = minhash.permutations(256, seed=7)
  base = rng.integers(0, 2**32, 400).astype(np.uint64)
  errors = []
  for keep in (400, 300, 200, 100):
    other = np.concatenate([base[:keep], rng.integers(0, 2**32, 400 - keep).astype(np.uint64)])
    x, y = minhash.shingles(base, 1), minhash.shingles(other, 1)
    true = len(np.intersect1d(x, y)) / len(np.union1d(x, y))
    est = minhash.similarity(minhash.signature(x, a, b)[None], minhash.signature(y, a, b)[None])
    errors.append(abs(float(est[0]) - true))
  assert max(errors) < 0.1                           # 256 permutations: std <= 0.03
  a2, b2 = minhash.permutations(256, seed=7)
  a3, _ = minhash.permutations(256, seed=8)
  assert np.array_equal(a, a2) and np.array_equal(b, b2) and not np.array_equal(a, a3)


def test_union_find_components():
  label = minhash.components(6, np.array([4, 1, 3]), np.array([5, 2, 4]))
  assert label.tolist() == [0, 1, 1, 3, 3, 3]


def test_line_dedup(corpus, tmp_path):
  stats, kept = _run(corpus, tmp_path, _config("lines"))
  texts = [r["text"] for r in kept.values()]
  kept_lines = [line for t in texts for line in t.split("\n")]
  assert not set(BOILER) & set(kept_lines)
  assert EDGE7 not in kept_lines and kept_lines.count(EDGE6) == 6   # > 6 documents: removed
  assert stats["removed"]["line_dedup"] == len(corpus.boiler_only)
  assert not corpus.boiler_only & set(kept)
  # Every other line survives: removed lines are exactly the boilerplate and EDGE7 copies.
  all_lines = [line for f in _inputs(corpus) for line in f["text"].split("\n")]
  expected = sum(line in BOILER or line == EDGE7 for line in all_lines)
  assert stats["lines_removed"] == expected
  assert len(kept_lines) == len(all_lines) - expected


def _inputs(corpus):
  for f in sorted(corpus.path.iterdir()):
    data = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
    yield from (json.loads(line) for line in data.splitlines())   # bytes: "\n" only


def test_bucket_counter_counts_documents_per_bucket():
  counter = lines.BucketCounter(bucket_docs=3, max_count=1)
  docs = ["a\nb\nb", "a\nc", "x", "b\nd", "e", "d"]   # buckets: docs 0-2, 3-5
  for text in docs:
    counter.add(lines.distinct_lines(text))
  counter.close_bucket()
  h = {s: lines.distinct_lines(s)[0] for s in "abd"}
  assert counter.frequent[0].tolist() == [h["a"]]   # b twice but in one document
  assert counter.frequent[1].tolist() == [h["d"]]
  text, removed = lines.remove_lines("a\n\n  a \nkeep", counter.frequent[0])
  assert (text, removed) == ("\nkeep", 2)


def test_dup_ngram_fraction():
  def frac(text, n=5):
    tokens = words(text)
    return filters.dup_ngram_fraction(hash_words(tokens), np.array([len(t) for t in tokens]), n)
  rng = np.random.default_rng(0)
  normal = " ".join(f"w{i}" for i in rng.permutation(300))
  assert frac(normal) == 0.0
  assert frac("the cat sat on the mat " * 10) == 1.0
  half = normal[:900] + " " + " ".join(["alpha beta gamma delta epsilon"] * 2)
  assert 0.0 < frac(half) < 0.2


def test_dup_ngram_filter_removes_repetitive_documents(corpus, tmp_path):
  stats, kept = _run(corpus, tmp_path, _config("dup_ngram"))
  assert corpus.ids - set(kept) == corpus.repetitive


def test_dirty_word_filter(corpus, tmp_path):
  word_list = tmp_path / "dirty.txt"
  word_list.write_text("# test list\n" + "\n".join(DIRTY) + "\n")
  cfg = _config()
  cfg = dataclasses.replace(cfg, filters=dataclasses.replace(
      cfg.filters, dirty_words_path=str(word_list), dirty_max_frac=0.02))
  _, kept = _run(corpus, tmp_path / "out", cfg)
  assert corpus.ids - set(kept) == corpus.dirty_heavy
  assert corpus.dirty_light <= set(kept)
  dirty = filters.DirtyWords(DIRTY)
  assert dirty.fraction(hash_words(words("a very rude phrase here badword"))) == 4 / 6


def test_kl_filter_removes_other_alphabets_and_random_bytes(corpus, tmp_path):
  budget = 15
  cfg = _config("kl")
  cfg = dataclasses.replace(cfg, filters=dataclasses.replace(
      cfg.filters, kl_quantile=1 - budget / len(corpus.ids)))
  stats, kept = _run(corpus, tmp_path, cfg)
  removed = corpus.ids - set(kept)
  assert corpus.outliers <= removed and len(removed) <= budget
  # An absolute threshold set to the one found gives the same result.
  cfg = dataclasses.replace(cfg, filters=dataclasses.replace(
      cfg.filters, kl_quantile=0.0, kl_max=stats["kl_threshold"]))
  _, kept2 = _run(corpus, tmp_path / "abs", cfg)
  assert set(kept2) == set(kept)


def _languages(rng, count, n_words):
  """Three synthetic languages over one alphabet, differing in letter frequencies."""
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  probs = np.random.default_rng(42).dirichlet(np.full(26, 0.5), size=3)
  out = []
  for lang, p in zip(("aa", "bb", "cc"), probs):
    for _ in range(count):
      ws = ["".join(rng.choice(letters, rng.integers(2, 9), p=p)) for _ in range(n_words)]
      out.append({"text": " ".join(ws), "lang": lang})
  return out


def test_language_id(tmp_path):
  rng = np.random.default_rng(0)
  train, test = _languages(rng, 30, 20), _languages(rng, 40, 8)
  model = LangId.train([x["text"] for x in train], [x["lang"] for x in train])
  model.save(str(tmp_path / "langid.npz"))
  model = LangId.load(str(tmp_path / "langid.npz"))
  accuracy = np.mean([model.predict(x["text"])[0] == x["lang"] for x in test])
  assert accuracy >= 0.95, accuracy
  (tmp_path / "in").mkdir()
  docs = [{"id": i, **x} for i, x in enumerate(_languages(rng, 20, 30))]
  (tmp_path / "in" / "mixed.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  cfg = dataclasses.replace(_config(), langid=dataclasses.replace(
      CurationConfig().langid, model_path=str(tmp_path / "langid.npz"), allowed=("aa",)))
  stats = curate(str(tmp_path / "in"), str(tmp_path / "out"), cfg)
  kept = [json.loads(s)["lang"] for s in (tmp_path / "out" / "mixed.jsonl").open()]
  assert kept == ["aa"] * 20 and stats["removed"]["langid"] == 40


def test_quality_classifier_learns_a_separable_task(tmp_path):
  rng = np.random.default_rng(0)
  common, good, bad = ([f"{p}{i}" for i in range(k)] for p, k in (("c", 300), ("g", 50),
                                                                   ("b", 50)))

  def doc(label):
    ws = list(rng.choice(common, 40)) + list(rng.choice(good if label else bad, 10))
    return " ".join(rng.permutation(ws))
  labels = [int(i % 2) for i in range(300)]
  texts = [doc(y) for y in labels]
  model = QualityModel.train(texts[:200], labels[:200])
  scores = np.array([model.score(t) for t in texts[200:]])
  accuracy = np.mean((scores >= 0.5) == np.array(labels[200:]))
  assert accuracy >= 0.95, accuracy
  model.save(str(tmp_path / "q.npz"))
  assert QualityModel.load(str(tmp_path / "q.npz")).score(texts[0]) == pytest.approx(
      model.score(texts[0]))
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "x.jsonl").write_text("".join(
      json.dumps({"text": t, "y": y}) + "\n" for t, y in zip(texts[200:], labels[200:])))
  cfg = dataclasses.replace(_config(), quality=dataclasses.replace(
      CurationConfig().quality, model_path=str(tmp_path / "q.npz")))
  curate(str(tmp_path / "in"), str(tmp_path / "out"), cfg)
  kept = [json.loads(s)["y"] for s in (tmp_path / "out" / "x.jsonl").open()]
  assert len(kept) >= 45 and np.mean(kept) >= 0.95


def _malformed_dir(root: pathlib.Path) -> pathlib.Path:
  root.mkdir()
  good = "".join(json.dumps({"text": f"good document number {i}"}) + "\n" for i in range(3))
  (root / "a_good.jsonl").write_text(good)
  bad = [b'{"text": "fine one"}', b'{"text": "broken', b'{"url": "no text"}',
         b'{"text": 42}', b'{"text": "caf\xe9 latin-1"}', b'["an", "array"]', b"",
         b'{"text": "fine two"}']
  (root / "b_bad.jsonl").write_bytes(b"\n".join(bad) + b"\n")
  (root / "c_empty.jsonl").write_bytes(b"")
  payload = gzip.compress("".join(json.dumps({"text": f"zipped doc {i} " * 50}) + "\n"
                                  for i in range(200)).encode(), mtime=0)
  (root / "d_truncated.jsonl.gz").write_bytes(payload[:len(payload) // 2])
  latin1 = '{"text": "déjà vu"}\n{"text": "à la"}\n'.encode("latin-1")   # not UTF-8
  (root / "e_latin1.jsonl").write_bytes(latin1)
  return root


def test_malformed_input_is_counted(tmp_path):
  root = _malformed_dir(tmp_path / "in")
  stats = curate(str(root), str(tmp_path / "out"), _config())
  assert stats["skipped_lines"] == {"bad_json": 1, "missing_text": 1, "non_string_text": 1,
                                    "invalid_utf8": 3, "not_object": 1}
  where = {(pathlib.Path(e["file"]).name, e["line"], e["reason"])
           for e in stats["skipped_examples"]}
  assert ("b_bad.jsonl", 2, "bad_json") in where and ("b_bad.jsonl", 5, "invalid_utf8") in where
  problems = {pathlib.Path(p["file"]).name: p["reason"] for p in stats["file_problems"]}
  assert problems == {"c_empty.jsonl": "empty_file", "d_truncated.jsonl.gz": "unreadable",
                      "e_latin1.jsonl": "no_valid_documents"}   # a whole file never goes quietly
  assert stats["blank_lines"] == 1
  zipped = stats["kept"] - 5                          # 3 good + 2 fine in b_bad
  assert 0 < zipped < 200                             # lines before the damage are kept
  assert stats["input_lines"] == stats["kept"] + 7
  assert (tmp_path / "out" / "d_truncated.jsonl").exists()


def test_strict_mode_names_file_line_and_fix(tmp_path):
  root = _malformed_dir(tmp_path / "in")
  cfg = dataclasses.replace(_config(), read=dataclasses.replace(CurationConfig().read,
                                                                strict=True))
  with pytest.raises(CurationInputError, match=r"b_bad\.jsonl:2: bad json .*fix: .*--strict"):
    curate(str(root), str(tmp_path / "out"), cfg)
  result = _cli("--input", str(root), "--out", str(tmp_path / "cli"), "--strict")   # 2 workers
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert re.fullmatch(r"error: \S*b_bad\.jsonl:2: bad json \(.*\); fix: .*\n", result.stderr)
  (root / "b_bad.jsonl").unlink()
  with pytest.raises(CurationInputError, match=r"c_empty\.jsonl: empty file"):
    curate(str(root), str(tmp_path / "out"), cfg)


def test_missing_input_is_a_clear_error(tmp_path):
  with pytest.raises(CurationInputError, match="does not exist"):
    curate(str(tmp_path / "nope"), str(tmp_path / "out"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("not jsonl")
  with pytest.raises(CurationInputError, match="no \\*.jsonl"):
    curate(str(tmp_path / "empty"), str(tmp_path / "out"))
  result = _cli("--input", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
  assert "Traceback" not in result.stderr


def test_config_file_round_trips():
  path = ROOT / "experiments" / "configs" / "curation.py"
  spec = importlib.util.spec_from_file_location("curation_config", path)
  curation = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(curation)
  assert CurationConfig.from_dict(curation.get_config().to_dict()) == CurationConfig()
  dedup_only = CurationConfig.from_dict(curation.get_config("dedup_only").to_dict())
  assert not dedup_only.filters.kl_enabled and not dedup_only.filters.dup_ngrams
  with pytest.raises(ValueError, match="unknown curation config variant"):
    curation.get_config("tiny")
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['treshold'\] in minhash"):
    CurationConfig.from_dict({"minhash": {"treshold": 0.8}})
  with pytest.raises(ValueError, match="multiple of"):
    CurationConfig.from_dict({"minhash": {"num_perms": 100, "bands": 32}})


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.curate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_cli_end_to_end_matches_in_process_run(corpus, tmp_path):
  result = _cli("--input", str(corpus.path), "--out", str(tmp_path / "cli"), "--workers", "2")
  assert result.returncode == 0, result.stderr
  stats = json.loads((tmp_path / "cli" / "stats.json").read_text())
  assert stats["input_lines"] == len(corpus.ids)
  assert stats["input_lines"] == (stats["kept"] + sum(stats["removed"].values())
                                  + sum(stats["skipped_lines"].values()))
  outputs = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*.jsonl"))
  assert [str(p) for p in outputs] == [f"part-{k}.jsonl" for k in range(4)]
  kept = {json.loads(line)["id"] for p in outputs
          for line in (tmp_path / "cli" / p).read_text().splitlines()}
  assert len(kept) == stats["kept"] and not kept & (corpus.exact | corpus.repetitive)
  assert len(kept & corpus.dups) <= 0.1 * len(corpus.dups)        # near-dup recall >= 0.9
  # Deterministic, and the same with 2 processes as in one: identical bytes.
  for run in ("one", "two"):
    curate(str(corpus.path), str(tmp_path / run), CurationConfig(workers=1))
  for p in outputs:
    data = (tmp_path / "cli" / p).read_bytes()
    assert data == (tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes()
  strip = lambda s: {k: v for k, v in s.items() if k != "config"}   # noqa: E731
  assert strip(json.loads((tmp_path / "one" / "stats.json").read_text())) == strip(stats)


def test_cli_trains_and_applies_a_quality_model(tmp_path):
  labelled = tmp_path / "labelled.jsonl"
  rows = [{"text": ("great informative article " if i % 2 else "buy now cheap spam ") * 5,
           "label": i % 2} for i in range(40)]
  labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
  result = _cli("--train-quality", str(labelled), "--quality-model", str(tmp_path / "q.npz"))
  assert result.returncode == 0, result.stderr
  assert "training accuracy 100.0%" in result.stdout
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "x.jsonl").write_text(labelled.read_text())
  result = _cli("--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                "--quality-model", str(tmp_path / "q.npz"), "--config", str(
                    ROOT / "experiments/configs/curation.py:dedup_only"),
                "--config.minhash.enabled=False", "--config.line_dedup.enabled=False",
                "--workers", "1")
  assert result.returncode == 0, result.stderr
  stats = json.loads((tmp_path / "out" / "stats.json").read_text())
  assert stats["removed"]["quality"] == 20 and stats["kept"] == 20


def test_an_empty_file_beside_a_good_one_with_minhash_on(tmp_path):
  """The default curation (MinHash on) over a folder with an empty file beside a good one: the
  empty file is reported, the good one curated (it exited 2 with a numpy concatenate error)."""
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a_empty.jsonl").write_text("")
  with open(tmp_path / "in" / "b_good.jsonl", "w") as out:
    for i in range(30):
      words = " ".join(f"w{(i * 7 + j) % 101}" for j in range(40 + i))
      out.write(json.dumps({"text": f"document {i}: {words}"}) + "\n")
  stats = curate(str(tmp_path / "in"), str(tmp_path / "out"), CurationConfig(workers=1))
  assert stats["kept"] > 0
  assert {pathlib.Path(p["file"]).name: p["reason"] for p in stats["file_problems"]} == {
      "a_empty.jsonl": "empty_file"}
  assert (tmp_path / "out" / "b_good.jsonl").exists()
