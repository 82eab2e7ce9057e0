"""Trains a SentencePiece tokenizer (byte-fallback BPE) on raw text.

python -m experiments.train_tokenizer --input raw/ --vocab-size 32000 --out tokenizer.model

Inputs are JSONL (`text` field), plain text or Parquet files, directories or glob patterns.
Exit code 2: a bad option, no text, or a vocabulary the text cannot fill (said after training;
nothing is written), in one line.
"""

import itertools

from llama3_jax import cli
from llama3_jax.data.sources import Skips, list_files, read_documents
from llama3_jax.data.tokenizers import train_sentencepiece
from llama3_jax.errors import at_least, check_apart, writable_file


def main(argv=None) -> None:
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--input", nargs="+", required=True, help="files, directories, globs")
  parser.add_argument("--vocab-size", type=int, required=True)
  parser.add_argument("--out", required=True, help="the .model file to write")
  parser.add_argument("--max-documents", type=int, default=1_000_000,
                      help="train on at most this many documents")
  parser.add_argument("--text-field", default="text")
  parser.add_argument("--character-coverage", type=float, default=0.9995,
                      help="share of characters given their own piece; the rest are bytes")
  args = parser.parse_args(argv)
  at_least(args.vocab_size, 1, "--vocab-size")
  at_least(args.max_documents, 1, "--max-documents")
  check_apart(args.out, [("--input", i) for i in args.input])
  writable_file(args.out, "--out")
  skips = Skips()
  texts = (text for path in list_files(args.input)
           for text in read_documents(path, skips, text_field=args.text_field))
  tokenizer = train_sentencepiece(itertools.islice(texts, args.max_documents),
                                  args.vocab_size, args.out,
                                  character_coverage=args.character_coverage,
                                  where=f"--input {' '.join(args.input)}", exact=True)
  print(f"wrote {args.out}: vocab {tokenizer.vocab_size}"
        + (f"; skipped {dict(skips.counts)}" if skips.counts else ""))


if __name__ == "__main__":
  cli.run(main)
