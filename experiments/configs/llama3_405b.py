"""Llama 3 405B pre-training as in the report (§3.3-3.4): 16K GPUs, batch and sequence ramp.

python -m experiments.pretrain --config experiments/configs/llama3_405b.py --workdir /ckpt/405b
python -m experiments.pretrain --config experiments/configs/llama3_405b.py --dry-run
python -m experiments.pretrain --config experiments/configs/llama3_405b.py:final --dry-run

Dry run on 16,384 x H100 (2026-12-08), the 16M-token stage (Table 4, row 2): fits, 72.1 GiB
per GPU, MFU 34.7% (one sequence per FSDP replica per micro-batch, 16 of them, bubble 12%;
selective remat; tensor parallelism's 1.1 s exposed). The ramp's 1,024-row stages run 8
micro-batches on 16 stages (46.8 and 71.6 GiB, MFU 18.0%: the report ran them on fewer GPUs).
`:final` plans the 16M-token phase alone (its token count starts at 0: it does not resume the
ramp).

The mesh is the report's tensor 8 x stage 16 x fsdp 128. Its 126 layers pipeline over the 16
stages as the report's 7 + 14 x 8 + 7 (the first and the last stage carry the embedding and the
head; llama3_jax/parallel/pipeline.py gives those two stages an empty, identity chunk each, 2
of 128 slots). See where every parameter lives with
`python -m experiments.inspect_sharding --size llama3-405b --mesh tensor=8,stage=16,fsdp=128`.
"""

from llama3_jax.train.config import default_config

M = 1024 * 1024


def get_config(arg: str | None = None):
  c = default_config()
  # Selective remat: every matmul's output kept (none recomputed in backward); q/k/v and
  # gate/up as one matmul each (Megatron's): tensor parallelism's backward reduces two input
  # gradients per layer, not five.
  c.model.update(size="llama3-405b", dtype="bfloat16", remat="minimal", attention="blockwise",
                 fused_matmuls=True)
  c.mesh.update(data=1, fsdp=128, stage=16, tensor=8, dcn_fsdp=128, dcn_stage=16)
  # Llama 3's FSDP mode: every weight gathered once per step, in bf16 (the fp32 masters stay
  # sharded; gradients are accumulated and reduced in fp32).
  c.sharding.update(fsdp_mode="llama3", gather_dtype="bfloat16")
  c.sharding.sequence_parallel = True   # the residual stream split over tensor (and the carry)
  # Interleaved: 8 chunks of one layer per stage, the first and the last stage's one empty
  # (126 layers in 128 chunks): bubble (16 - 1) / (8 x 16) = 12%.
  c.sharding.pipeline_repeats = 8
  c.train.steps = 1_200_000
  # 4M tokens of 4,096 -> 8M of 8,192 after 252M tokens -> 16M after 2.87T tokens; one
  # sequence per FSDP replica per micro-batch: the 1,024-row stages 8 micro-batches, the last 16.
  c.train.stages = (dict(until_tokens=252 * M, batch_tokens=4 * M, seq_len=4096, micro_batches=8),
                    dict(until_tokens=2_870_000 * M, batch_tokens=8 * M, seq_len=8192,
                         micro_batches=8),
                    dict(until_tokens=None, batch_tokens=16 * M, seq_len=8192))
  c.train.micro_batches = 16
  if arg == "final":   # the 16M-token stage alone
    c.train.stages = c.train.stages[-1:]
  c.train.peak_lr = 8e-5
  c.train.warmup_tokens = 8000 * 4 * M
  c.train.anneal_tokens = 40 * M
  c.checkpoint.every_steps = 500
  c.checkpoint.keep_period = 10_000
  c.log.every_steps = 1
  c.runtime.cpu_devices = 0
  return c
