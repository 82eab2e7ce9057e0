"""Supervised fine-tuning (report §4.1.3): the assistant's tokens only, from a base model.

python -m experiments.sft                                  # the embedded default (a few minutes)
python -m experiments.sft --config experiments/configs/sft.py --config.init.path=RUN \
    --config.data.path=FILE.jsonl --workdir /tmp/sft
python -m experiments.sft --config experiments/configs/sft_llama3_70b.py --dry-run

With no arguments it fine-tunes workdirs/pretrain (trained first if absent) on the shipped
arithmetic task and reports held-out exact match and preference accuracy before and after,
each with its 95% interval. Writes WORKDIR/metrics.jsonl, TensorBoard events, loss_lr.png,
checkpoints (resumable; SIGTERM saves and exits 0), eval.json and the model in Hugging Face
format in WORKDIR/hf. --dry-run validates, traces and lowers the step on an abstract mesh and
prints the plan's memory per device (llama3_jax/train/dry_run.py). Data files:
llama3_jax/data/conversations/__init__.py. Exit codes: 0 done,
2 bad config or data.
"""

from experiments import _finetune as finetune

if __name__ == "__main__":
  finetune.launch("sft")
