"""Pre-tokenizes raw text into ArrayRecord shards for training.

python -m experiments.prepare_data --input raw/web/ --tokenizer tokenizer.model \
    --source general --out data/ --workers 8
python -m experiments.pretrain --config.data.path=data/

python -m experiments.prepare_data --input clean/ --tokenizer tokenizer.model --out data/ \
    --executor ray --tasks 64          # or --executor slurm: writes job arrays + submit.sh

Run once per source (general, math, code, multilingual, or names of your own) into the same
--out; stages mix sources by name. Interrupted runs resume (only unfinished shards are
written); --shard-index/--shard-count split the files over machines by hand, --executor ray or
slurm over a cluster (--tasks per stage, default --workers). See llama3_jax/data/prepare.py.
Exit code 2: a bad option or input, in one line (llama3_jax/cli.py).
"""

import shlex
import sys

from llama3_jax import cli
from llama3_jax.data.prepare import prepare
from llama3_jax.errors import check_apart


def main(argv=None) -> None:
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--input", nargs="+", required=True, help="files, directories, globs")
  parser.add_argument("--tokenizer", required=True,
                      help="a SentencePiece .model or Meta's Llama 3 tokenizer.model")
  parser.add_argument("--out", required=True)
  parser.add_argument("--source", default="general", help="the source's name in mixtures")
  parser.add_argument("--workers", type=int, default=1, help="tokenizing processes")
  parser.add_argument("--text-field", default="text")
  parser.add_argument("--strict", action="store_true",
                      help="stop at the first bad record instead of counting and skipping it")
  parser.add_argument("--shard-index", type=int, default=0)
  parser.add_argument("--shard-count", type=int, default=1)
  parser.add_argument("--provenance", default="", help="where the text came from")
  parser.add_argument("--executor", default="local", choices=["local", "ray", "slurm"],
                      help="who runs the tasks: a process pool, Ray, or SLURM job arrays")
  parser.add_argument("--tasks", type=int, default=0, help="tasks per stage (default: workers)")
  args = parser.parse_args(argv)
  check_apart(args.out, [*(("--input", i) for i in args.input), ("--tokenizer", args.tokenizer)])
  relaunch = shlex.join(["python", "-m", "experiments.prepare_data",
                         *(sys.argv[1:] if argv is None else argv)])
  manifest = prepare(args.input, args.tokenizer, args.out, source=args.source,
                     workers=args.workers, strict=args.strict, text_field=args.text_field,
                     shard_index=args.shard_index, shard_count=args.shard_count,
                     provenance=args.provenance, executor=args.executor, tasks=args.tasks,
                     relaunch=relaunch, log=print)
  if not manifest:
    print(f"when the jobs finish: shards and manifest.json in {args.out}"
          if args.executor == "slurm" else
          f"shards written to {args.out}/{args.source}; other machines still have files to do")
    return
  source = manifest["sources"][args.source]
  print(f"{args.source}: {source['documents']:,} documents, {source['tokens']:,} tokens in "
        f"{len(source['shards'])} shards under {args.out}"
        + (f"; skipped {source['skipped']['counts']}" if source["skipped"]["counts"] else ""))


if __name__ == "__main__":
  cli.run(main)
