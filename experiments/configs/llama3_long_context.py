"""Long-context extension with context parallelism, in miniature: 512 -> 4,096 tokens.

python -m experiments.pretrain --config experiments/configs/llama3_long_context.py \
    --workdir /tmp/long_context
python -m experiments.pretrain --config experiments/configs/llama3_long_context.py:schedule=ring

Llama 3 (report §3.4.2) pre-trains at 8K tokens, then extends the context to 128K in six
stages, each advancing once short-context evaluations have recovered and needle-in-a-haystack
passes at the new length; Llama 3.1 scales RoPE (factor 8 over the original 8K) for it. Here the
debug model does the same at 1/16 scale, 512 -> 1K -> 2K -> 4K tokens, with RoPE scaled 8x over
an original 512-token context. Each sequence is split over `context=4` ranks (2*4 load-balanced
chunks, K/V all-gathered; `schedule=ring` passes K/V round a ring instead) and heads over
`tensor=2` inside each context shard (Llama 3's order: tensor innermost, then context). The
batch stays at 4,096 tokens, so longer sequences come fewer per batch, as in the report (16M
tokens per batch at every length). Attention is blockwise (flash): memory per rank is
O(local queries x block), never O(T^2).

The stages advance on a fixed token count (the default run: ~2 minutes on 2 CPU cores, most of
it one compile per stage); a real run chooses the boundaries from evaluations and resumes the
same --workdir with the next stages. On more devices, put the rest on fsdp (`context=4` keeps
tensor=2 and fills fsdp).
"""

from llama3_jax.train.config import apply_args, default_config

TOKENS_PER_BATCH = 4096
STAGES = ((512, 3), (1024, 2), (2048, 2), (4096, 3))   # (sequence length, steps at it)


def get_config(arg: str | None = None):
  c = default_config()
  c.model.update(size="debug-long", attention="blockwise", attention_block_q=256,
                 attention_block_kv=256)
  c.mesh.fsdp, c.mesh.context, c.mesh.tensor = -1, 4, 2
  c.sharding.context_schedule = "all_gather"
  c.data.streams = 1   # must divide every stage's rows: one row of 4,096 tokens at the end
  stages, seen = [], 0
  for i, (seq_len, steps) in enumerate(STAGES):
    seen += steps * TOKENS_PER_BATCH
    stages.append(dict(until_tokens=None if i == len(STAGES) - 1 else seen,
                       batch_tokens=TOKENS_PER_BATCH, seq_len=seq_len))
  c.train.stages = tuple(stages)
  c.train.steps = sum(steps for _, steps in STAGES)
  c.train.peak_lr, c.train.warmup_tokens = 3e-3, 2 * TOKENS_PER_BATCH
  c.train.anneal_tokens = 2 * TOKENS_PER_BATCH   # the final anneal at full length (§3.4.3)
  c.checkpoint.every_steps = 5
  c.log.every_steps = 1
  return apply_args(c, arg, {"steps": "train.steps", "context": "mesh.context",
                             "schedule": "sharding.context_schedule"})
