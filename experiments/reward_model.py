"""A reward model (report §4.1.2) on preference data: edited > chosen > rejected, one row each.

python -m experiments.reward_model                         # this config's default, a few minutes
python -m experiments.reward_model --config.init.path=workdirs/sft \
    --config.data.path=prefs.jsonl --workdir /tmp/rm

The model is the starting run's backbone with a scalar head in place of the LM head; the reward
is read at each response's `<|eot_id|>`. Each example's prompt and its 2 or 3 responses share a
row (each response sees the prompt and itself, in a seeded shuffled order), and the loss is
-log sigmoid(r_better - r_worse) averaged over the example's ranked pairs
(llama3_jax/posttrain/reward.py). With no arguments it trains on the shipped arithmetic task's
pairs (correct answer > near miss) from workdirs/pretrain (trained first if absent) and reports
held-out pairwise accuracy with its 95% interval and the mean margin. Writes
WORKDIR/metrics.jsonl (loss, pair_accuracy, reward_margin), checkpoints (resumable), eval.json
and WORKDIR/hf (LlamaForSequenceClassification, num_labels=1). Exit codes: 0 done, 2 bad config
or data.
"""

from experiments import _finetune as finetune

if __name__ == "__main__":
  finetune.launch("reward", name="reward_model")
