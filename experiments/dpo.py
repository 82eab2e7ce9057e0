"""Direct preference optimisation (report §4.1.4) with Llama 3's masking and NLL term.

python -m experiments.dpo                                  # the embedded default (a few minutes)
python -m experiments.dpo --config experiments/configs/dpo.py --config.init.path=RUN \
    --config.data.path=FILE.jsonl --workdir /tmp/dpo
python -m experiments.dpo --config experiments/configs/dpo_llama3_405b.py --dry-run

With no arguments it trains workdirs/sft (made first if absent) on the shipped task's
preference pairs and reports held-out exact match and preference accuracy before and after,
each with its 95% interval. Writes WORKDIR/metrics.jsonl, TensorBoard events, loss_lr.png,
checkpoints (resumable; SIGTERM saves and exits 0), eval.json and the model in Hugging Face
format in WORKDIR/hf. --dry-run validates, traces and lowers the step (policy and frozen
reference) on an abstract mesh and prints the plan's memory per device, reading nothing but, with
model.size="init", the starting model's config (llama3_jax/train/dry_run.py). Data files:
llama3_jax/data/conversations/__init__.py. Exit codes: 0 done,
2 bad config or data.
"""

from experiments import _finetune as finetune

if __name__ == "__main__":
  finetune.launch("dpo")
