"""The shipped held-out cloze task: a held-out document's true continuation among the
continuations of others (multiple choice, scored by llama3_jax/eval/multiple_choice.py).

    examples = cloze_task()            # or tasks.read_task("cloze")
    python -m experiments.evaluate --tasks cloze

Built from the embedded corpus' held-out split (llama3_jax/data/corpus.py:embedded_heldout:
documents the training corpus never reads), every source's documents in their stored order.
Per document: the query is its first PREFIX_TOKENS tokens and its continuation the next
SPAN_TOKENS, both cut at word starts (a piece beginning with "▁", so that query + " " +
continuation is the document's own text); documents with no such cut (too short, or scripts
without spaces) are left out. Choices: the true continuation and CHOICES - 1 continuations of
other documents drawn uniformly from all sources (seeded).

Why this design: a distractor is drawn exactly as a gold is (another document's continuation,
cut the same way), so a scorer that ignores the query, e.g. one that prefers short or common
text, scores chance in expectation (the default model with the query replaced by "Text:":
0.262 +/- 0.033), and only reading the query beats it: continuing its topic, style, script and
the words at the cut. Distractors from all sources, not only the gold's own, because a 60-step
model reads the source from the query (code, docstring, arithmetic, another script) but hardly
more: from the gold's source alone it scores ~0.30 +/- 0.034, from all 0.374 +/- 0.036 (4
choices, 680 examples; a 400-step model 0.669 +/- 0.035; docs/evaluation.md).
"""

import functools
import pathlib
import random

from llama3_jax.eval.example import Example

PREFIX_TOKENS = 64
SPAN_TOKENS = 16
CHOICES = 4


def _cut(tokenizer, ids: list[int], prefix: int, span: int) -> tuple[str, str] | None:
  """(query, continuation) of one document, or None where it has no clean cut."""
  starts = [i for i in range(1, len(ids)) if tokenizer.sp.id_to_piece(ids[i]).startswith("▁")]
  cut = next((i for i in starts if i >= prefix), None)
  end = next((i for i in starts if cut is not None and i >= cut + span), None)
  if end is None:
    return None
  query, continuation = tokenizer.decode(ids[:cut]), tokenizer.decode(ids[cut:end])
  if not continuation.strip() or query + " " + continuation != tokenizer.decode(ids[:end]):
    return None
  return query, continuation


@functools.lru_cache(maxsize=4)
def _pieces(data_dir: str, prefix: int, span: int) -> tuple[tuple[str, str, str], ...]:
  """(source, query, continuation) per held-out document with a clean cut."""
  from llama3_jax.data.prepare import read_manifest
  from llama3_jax.data.tokenizers import load_tokenizer
  from llama3_jax.eval.perplexity import _documents
  manifest = read_manifest(pathlib.Path(data_dir))
  tokenizer = load_tokenizer(manifest["tokenizer"]["path"])
  out = []
  for name, source in sorted(manifest["sources"].items()):
    for ids in _documents(pathlib.Path(data_dir), source):
      piece = _cut(tokenizer, ids.tolist(), prefix, span)
      if piece:
        out.append((name, *piece))
  return tuple(out)


def cloze_task(data_dir=None, *, prefix: int = PREFIX_TOKENS, span: int = SPAN_TOKENS,
               choices: int = CHOICES, seed: int = 0) -> list[Example]:
  """The cloze examples of a prepared data directory (default: the embedded held-out split),
  the same for the same data and seed."""
  if data_dir is None:
    from llama3_jax.data.corpus import embedded_heldout
    data_dir = embedded_heldout()
  pieces = _pieces(str(pathlib.Path(data_dir).resolve()), prefix, span)
  if len(pieces) < choices:
    raise ValueError(f"{data_dir} has {len(pieces)} documents with a clean cut; "
                     f"{choices} choices need at least {choices}")
  rng = random.Random(seed)
  examples = []
  for index, (_, query, gold) in enumerate(pieces):
    others = set()
    while len(others) < choices - 1:   # other documents' continuations, all distinct
      other = pieces[rng.randrange(len(pieces))][2]
      if other != gold:
        others.add(other)
    options = [gold] + sorted(others)
    rng.shuffle(options)
    examples.append(Example(query, tuple(options), options.index(gold), index,
                            shot=f"{query} {gold}"))
  return examples
