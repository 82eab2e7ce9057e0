"""The embedded corpus: four named sources built on first use from text every install carries.

    data_dir = embedded_corpus()     # cached under ~/.cache/llama3_jax (or $LLAMA3_JAX_CACHE)
    heldout_dir = embedded_heldout() # the same four sources from text the corpus never uses

- general: the `pydoc` topics of the running Python (its language reference) and the
  docstrings of its standard library modules, read with `ast` (nothing is imported);
- code: the standard library's Python source, cut into chunks at top-level statements;
- math: generated arithmetic and word problems with worked answers (seeded);
- multilingual: `Faker` (a pinned dependency) paragraphs in 19 non-English locales, built from
  each locale's word list: real words and scripts, not real sentences.

A byte-fallback BPE SentencePiece tokenizer (with Llama 3's chat tokens) is trained on the
corpus, and each source is prepared into ArrayRecord shards (`prepare.py`). The manifest records
every source's provenance, including the Python and Faker versions: the corpus is identical on
machines with the same versions.

The held-out split (`embedded_heldout`, for held-out loss and bits per byte:
llama3_jax/eval/perplexity.py) is built from documents the corpus builder never reads, so the
training data is unchanged: `general` from the docstrings of methods (the corpus takes only
module and top-level docstrings) of standard-library files past the code source's byte limit;
`code` from those files' source (their module and top-level docstrings are in the training
`general` source: the held-out code shares them, no whole document); `math` from another seed;
`multilingual` from other Faker seeds. It is tokenized with the corpus' own tokenizer.
"""

import ast
import json
import os
import pathlib
import random
import shutil
import sys
import sysconfig
import tempfile

from llama3_jax.data.prepare import prepare, read_manifest
from llama3_jax.data.tokenizers import CHAT_SPECIAL_TOKENS, train_sentencepiece

# 2: the tokenizer carries Llama 3's chat tokens (post-training starts from the default run).
VERSION = 2
DEFAULT_MIXTURE = (("general", 50.0), ("math", 25.0), ("code", 17.0), ("multilingual", 8.0))
LOCALES = ("de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "cs_CZ", "da_DK", "ru_RU",
           "uk_UA", "el_GR", "ja_JP", "zh_CN", "th_TH", "vi_VN", "he_IL", "fa_IR", "bn_BD",
           "hy_AM")
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3",
              "turtledemo", "ensurepip", "__pycache__", "tkinter", "config-3.11-x86_64-linux-gnu"}


def cache_dir() -> pathlib.Path:
  root = os.environ.get("LLAMA3_JAX_CACHE") or pathlib.Path.home() / ".cache" / "llama3_jax"
  return pathlib.Path(root)


def _stdlib_files(limit_bytes: int) -> list[pathlib.Path]:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files, total = [], 0
  for path in sorted(root.rglob("*.py")):
    if _SKIP_DIRS & set(path.relative_to(root).parts[:-1]) or path.name.startswith("test_"):
      continue
    files.append(path)
    total += path.stat().st_size
    if total > limit_bytes:
      break
  return files


def general_documents(limit_bytes: int = 1_500_000) -> list[str]:
  from pydoc_data.topics import topics
  docs = [text for _, text in sorted(topics.items()) if len(text) > 200]
  for path in _stdlib_files(8 * limit_bytes):
    try:
      tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
      continue
    parts = [ast.get_docstring(tree) or ""]
    for node in tree.body:
      if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
        doc = ast.get_docstring(node)
        if doc:
          parts.append(f"{node.name}: {doc}")
    text = "\n\n".join(p for p in parts if p)
    if len(text) > 200:
      docs.append(text)
    if sum(map(len, docs)) > limit_bytes:
      break
  return docs


def code_documents(limit_bytes: int = 1_000_000, chunk_chars: int = 3000) -> list[str]:
  docs, total = [], 0
  for path in _stdlib_files(limit_bytes):
    source = path.read_text(encoding="utf-8", errors="replace")
    docs.extend(_chunks(source, chunk_chars))
    total += len(source)
    if total > limit_bytes:
      break
  return docs


def _chunks(source: str, chunk_chars: int = 3000) -> list[str]:
  """Python source cut before a top-level statement once a chunk passes `chunk_chars`."""
  chunks, chunk = [], []
  for line in source.splitlines(keepends=True):
    if chunk and len("".join(chunk)) > chunk_chars and line[:1].strip():
      chunks.append("".join(chunk))
      chunk = []
    chunk.append(line)
  if chunk:
    chunks.append("".join(chunk))
  return chunks


_NAMES = ("Ada", "Ben", "Chen", "Dana", "Emil", "Fatima", "Goro", "Hana", "Ivan", "Jia")
_THINGS = ("apples", "books", "coins", "marbles", "stamps", "pencils", "shells", "cards")


def math_problem(rng: random.Random) -> tuple[str, int, str]:
  """One problem of the math source, in one of its six forms, as (the text up to its answer,
  the answer, the text after it): the problem reads `before + f" {answer}" + after`. The
  evaluation's arithmetic tasks ask the same questions (llama3_jax/eval/tasks.py)."""
  kind = rng.randrange(6)
  a, b = rng.randint(2, 999), rng.randint(2, 999)
  if kind == 0:
    return f"What is {a} + {b}?\nAnswer:", a + b, ""
  if kind == 1:
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?\nAnswer:", a - b, ""
  if kind == 2:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return f"Compute {a} * {b}.\n{a} * {b} =", a * b, ""
  if kind == 3:
    q, d = rng.randint(2, 99), rng.randint(2, 30)
    return f"Divide {q * d} by {d}.\n{q * d} / {d} =", q, ""
  name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
  if kind == 4:
    more = rng.randint(1, 50)
    return (f"{name} has {a} {thing} and gets {more} more. How many {thing} does {name} have "
            f"now?\n{name} has {a} + {more} =", a + more, f" {thing}.\nAnswer: {a + more}")
  per, boxes = rng.randint(2, 25), rng.randint(2, 25)
  return (f"{name} packs {boxes} boxes with {per} {thing} in each box. How many {thing} are "
          f"there in all?\n{boxes} * {per} =", boxes * per, f".\nAnswer: {boxes * per}")


def math_documents(count: int = 4000, seed: int = 0) -> list[str]:
  rng = random.Random(seed)

  def problem():
    before, answer, after = math_problem(rng)
    return f"{before} {answer}{after}"

  return ["\n\n".join(problem() for _ in range(rng.randint(3, 10))) for _ in range(count)]


def multilingual_documents(per_locale: int = 60, seed: int = 0) -> list[str]:
  import faker
  docs = []
  for i, locale in enumerate(LOCALES):
    fake = faker.Faker(locale)
    fake.seed_instance(seed + i)
    for _ in range(per_locale):
      docs.append("\n\n".join(fake.paragraph(nb_sentences=6) for _ in range(3)))
  return docs


HELDOUT_SEED = 1000   # math and Faker seeds the training corpus never uses (it uses 0..18)


def heldout_documents(limit_bytes: int = 200_000) -> dict[str, list[str]]:
  """The held-out split's documents per source, each ~`limit_bytes` (multilingual: 10 per
  locale); disjoint from `build`'s documents (module docstring)."""
  used_by_code = set(_stdlib_files(1_000_000))   # code_documents' files (same default limit)
  rest = [path for path in _stdlib_files(10**12) if path not in used_by_code]
  general, code = [], []
  for path in rest:
    source = path.read_text(encoding="utf-8", errors="replace")
    if sum(map(len, code)) < limit_bytes:
      # One chunk per file (many files), the second where there is one: the first holds the
      # module docstring, which the training `general` source has.
      chunks = _chunks(source)
      code.append(chunks[min(1, len(chunks) - 1)])
    try:
      tree = ast.parse(source)
    except (SyntaxError, ValueError):
      continue
    methods = [f"{cls.name}.{node.name}: {ast.get_docstring(node)}"
               for cls in tree.body if isinstance(cls, ast.ClassDef)
               for node in cls.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
               and not node.name.startswith("_") and ast.get_docstring(node)]
    text = "\n\n".join(methods)
    if len(text) > 200 and sum(map(len, general)) < limit_bytes:
      general.append(text)
    if sum(map(len, general)) >= limit_bytes and sum(map(len, code)) >= limit_bytes:
      break
  return {"general": general, "code": code,
          "math": math_documents(count=400, seed=HELDOUT_SEED),
          "multilingual": multilingual_documents(per_locale=10, seed=HELDOUT_SEED)}


def embedded_heldout(vocab_size: int = 512) -> pathlib.Path:
  """The held-out split, prepared with the embedded corpus' tokenizer (built on first use)."""
  corpus_dir = embedded_corpus(vocab_size)
  tokenizer = corpus_dir / "tokenizer.model"

  def build_heldout(tmp: pathlib.Path) -> None:
    raw = tmp / "raw"
    raw.mkdir()
    for name, docs in heldout_documents().items():
      with open(raw / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for text in docs:
          f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
      prepare(raw / f"{name}.jsonl", tokenizer, tmp, source=name,
              provenance=f"held-out {name} (llama3_jax.data.corpus.heldout_documents)")
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["tokenizer"]["path"] = str(tokenizer)   # the corpus' own file, not a copy
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))

  return _built_once(cache_dir() / f"heldout-v{VERSION}-vocab{vocab_size}", build_heldout)


def _provenance() -> dict:
  import faker
  python = f"Python {sys.version.split()[0]}"
  return {"general": f"{python}: pydoc_data.topics and standard-library docstrings (ast)",
          "code": f"{python}: standard-library source, chunked at top-level statements",
          "math": "generated arithmetic and word problems (llama3_jax.data.corpus, seed 0)",
          "multilingual": f"Faker {faker.VERSION} lorem paragraphs in {len(LOCALES)} locales: "
                          f"{', '.join(LOCALES)}"}


def build(out_dir, vocab_size: int = 512) -> pathlib.Path:
  """Writes raw JSONL, a tokenizer and prepared shards of the four sources into `out_dir`."""
  out_dir = pathlib.Path(out_dir)
  sources = {"general": general_documents(), "code": code_documents(),
             "math": math_documents(), "multilingual": multilingual_documents()}
  raw = out_dir / "raw"
  raw.mkdir(parents=True, exist_ok=True)
  for name, docs in sources.items():
    with open(raw / f"{name}.jsonl", "w", encoding="utf-8") as f:
      for text in docs:
        f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
  # The tokenizer sees the sources in their mixture proportions, roughly.
  sample = [t for name, weight in DEFAULT_MIXTURE
            for t in sources[name][:max(1, int(len(sources[name]) * weight / 50))]]
  # With the chat tokens, the default run's model can be fine-tuned into a chat model
  # (llama3_jax/posttrain/); pre-training text never contains them.
  train_sentencepiece(sample, vocab_size, out_dir / "tokenizer.model",
                      special_tokens=CHAT_SPECIAL_TOKENS)
  provenance = _provenance()
  for name in sources:
    prepare(raw / f"{name}.jsonl", out_dir / "tokenizer.model", out_dir, source=name,
            provenance=provenance[name])
  return out_dir


def embedded_corpus(vocab_size: int = 512) -> pathlib.Path:
  """The prepared corpus directory, built on first use (a few seconds) and then reused."""
  target = cache_dir() / f"corpus-v{VERSION}-vocab{vocab_size}"

  def build_corpus(tmp: pathlib.Path) -> None:
    build(tmp, vocab_size)
    _relocate(tmp, target)

  return _built_once(target, build_corpus)


def _built_once(target: pathlib.Path, make) -> pathlib.Path:
  """`target`, made by `make(tmp)` in a directory beside it and renamed into place, so that a
  concurrent or interrupted build never leaves a half-written one where a reader would look."""
  if (target / "manifest.json").exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
  try:
    make(tmp)
    try:
      os.rename(tmp, target)
    except OSError:   # another process won the race; what it built is the same
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  read_manifest(target)
  return target


def _relocate(tmp: pathlib.Path, target: pathlib.Path) -> None:
  """The manifest names the tokenizer by absolute path: point it at the final location."""
  path = tmp / "manifest.json"
  manifest = json.loads(path.read_text())
  manifest["tokenizer"]["path"] = str(target / "tokenizer.model")
  for source in manifest["sources"].values():
    source["inputs"] = [str(target / "raw" / pathlib.Path(p).name) for p in source["inputs"]]
  path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
