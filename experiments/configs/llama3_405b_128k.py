"""Llama 3.1 405B long-context pre-training to 128K tokens on Meta's layout (report §3.3.2,
§3.4.2; Table 4, row 3): tensor 8 x context 16 x stage 16 x fsdp 8 on 16,384 H100s.

python -m experiments.pretrain --config experiments/configs/llama3_405b_128k.py --dry-run
python -m experiments.pretrain --config experiments/configs/llama3_405b_128k.py \
    --config.init.path=/ckpt/405b --workdir /ckpt/405b_128k

Dry run on 16,384 x H100 (2026-12-08), the 128K stage: fits, 72.1 GiB per GPU, MFU 33.1%
(Table 4 reports 38% for this layout; the earlier stages 32.7-33.1%). Each 131,072-token
sequence is split over 16 context ranks (2 x 16 load-balanced chunks, K/V all-gathered,
llama3_jax/parallel/context.py) and its heads over 8 tensor ranks; the weights are sharded
over fsdp x context (context ranks hold the same weights), gathered once per step in bf16. One
sequence per FSDP replica per micro-batch at 128K, 16 micro-batches; the earlier stages keep
16 micro-batches of 8,192 tokens per GPU.

The report extends the 8K model to 128K in six stages over about 800B tokens, each advancing
once short-context evaluations recover and needle-in-a-haystack passes at the new length; it
gives neither the lengths nor the schedule. Here: doublings from 16K at 16M tokens per batch,
on a fixed token count each (a real run resumes the same --workdir with the next stage once
the evaluations pass), RoPE scaled 8x over the original 8K (Llama 3.1), the 405B's peak
learning rate with a short warm-up and the report's final 40M-token anneal.
"""

from llama3_jax.train.config import default_config

M = 1024 * 1024
LENGTHS = (16_384, 32_768, 65_536, 131_072)
TOKENS_PER_STAGE = 200_000 * M   # ~800B tokens in all


def get_config(arg: str | None = None):
  c = default_config()
  c.init.path = ""   # set: --config.init.path=/ckpt/405b (the 8K run's workdir)
  # Llama 3.1's RoPE scaling (factor 8 over 8,192); selective remat, fused q/k/v and gate/up
  # (Megatron's tensor-parallel communication), flash attention per context rank.
  c.model.update(size="llama3.1-405b", dtype="bfloat16", remat="minimal",
                 attention="blockwise", fused_matmuls=True)
  # Tensor parallelism fills each 8-GPU node; context, stage and fsdp span nodes.
  c.mesh.update(data=1, fsdp=8, stage=16, context=16, tensor=8, dcn_fsdp=8, dcn_stage=16,
                dcn_context=16)
  c.sharding.update(fsdp_mode="llama3", gather_dtype="bfloat16", sequence_parallel=True,
                    pipeline_repeats=8, context_schedule="all_gather")
  c.train.stages = tuple(
      dict(until_tokens=None if i == len(LENGTHS) - 1 else (i + 1) * TOKENS_PER_STAGE,
           batch_tokens=16 * M, seq_len=seq_len) for i, seq_len in enumerate(LENGTHS))
  c.train.micro_batches = 16   # 128 to 1,024 rows over 8 FSDP replicas: 1 to 8 rows each
  c.train.steps = len(LENGTHS) * TOKENS_PER_STAGE // (16 * M)
  c.train.peak_lr = 8e-5
  c.train.warmup_tokens = 100 * 16 * M
  c.train.anneal_tokens = 40 * M
  c.checkpoint.every_steps = 500
  c.checkpoint.keep_period = 10_000
  c.log.every_steps = 1
  c.runtime.cpu_devices = 0
  return c
