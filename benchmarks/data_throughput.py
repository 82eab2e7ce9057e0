"""Throughput of the data pipeline, per CPU core: tokenizing, and reading + mixing + packing.

    python -m benchmarks.data_throughput

(a) Tokenization of the embedded corpus' raw text (one process) with its SentencePiece model
    and with a Llama 3-format (tiktoken) tokenizer trained on the same text.
(b) The training loader on the prepared corpus (`Loader.next_batch`, one thread): rows of the
    default run (16 x 256, 8 streams, the 4-source mixture) and of a longer-row config.
Compared with the tokens/s the default training run consumes (`python -m experiments.pretrain`
on this machine, read from its metrics), which the loader must exceed 20x.
"""

import base64
import json
import pathlib
import subprocess
import sys
import tempfile
import time

from llama3_jax.data.corpus import embedded_corpus
from llama3_jax.data.loader import Loader
from llama3_jax.data.tokenizers import LLAMA3_PATTERN, Llama3Tokenizer, load_tokenizer
from llama3_jax.optim.schedules import Stage

ROOT = pathlib.Path(__file__).resolve().parents[1]


def texts(data_dir, limit_chars=3_000_000):
  out, total = [], 0
  for path in sorted((data_dir / "raw").glob("*.jsonl")):
    for line in open(path, encoding="utf-8"):
      text = json.loads(line)["text"]
      out.append(text)
      total += len(text)
      if total > limit_chars:
        return out
  return out


def time_tokenizer(tokenizer, docs):
  start = time.perf_counter()
  tokens = sum(len(tokenizer.encode(t)) for t in docs)
  return tokens, time.perf_counter() - start


def llama3_format_tokenizer(docs, workdir):
  from tiktoken._educational import bpe_train
  ranks = bpe_train("".join(docs)[:200_000], 1024, LLAMA3_PATTERN, visualise=None)
  path = workdir / "llama3_format.model"
  path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
  return Llama3Tokenizer(path)


def loader_rate(data_dir, stage, steps=200):
  loader = Loader(data_dir, seed=0, streams=8, vocab_size=512)
  loader.next_batch(0, stage)          # pipelines built, shuffle windows filled
  start = time.perf_counter()
  for _ in range(steps):
    loader.next_batch(0, stage)
  return steps * stage.batch_tokens / (time.perf_counter() - start)


def training_rate():
  with tempfile.TemporaryDirectory() as workdir:
    subprocess.run([sys.executable, "-m", "experiments.pretrain", "--workdir", workdir,
                    "--config.train.steps=30"], cwd=ROOT, check=True, capture_output=True)
    rows = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
  return max(r["tokens_per_s"] for r in rows)


def main():
  data_dir = embedded_corpus()
  docs = texts(data_dir)
  chars = sum(map(len, docs))
  print(f"tokenization of {chars / 1e6:.1f} M characters of the embedded corpus, 1 core:")
  print(f"| tokenizer | tokens | tokens/s |")
  print(f"|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for name, tok in [("SentencePiece BPE, vocab 512", load_tokenizer(data_dir /
                                                                        "tokenizer.model")),
                      ("Llama 3 format (tiktoken), 1024 ranks + 256 special",
                       llama3_format_tokenizer(docs, pathlib.Path(tmp)))]:
      tokens, seconds = time_tokenizer(tok, docs)
      print(f"| {name} | {tokens:,} | {tokens / seconds:,.0f} |")
  train = training_rate()
  print(f"\nloader (read ArrayRecord, pack, mix 4 sources, window-shuffle), 1 core; the "
        f"default training run consumes at most {train:,.0f} tokens/s here:")
  print("| rows x length | tokens/s | x training |")
  print("|---|---|---|")
  for rows, length in [(16, 256), (16, 2048)]:
    rate = loader_rate(data_dir, Stage(None, rows * length, length))
    print(f"| {rows} x {length} | {rate:,.0f} | {rate / train:,.0f}x |")


if __name__ == "__main__":
  main()
