"""Llama 3 70B pre-training on 16 nodes of 8 GPUs: tensor 8 inside each node x FSDP 16.

python -m experiments.pretrain --config experiments/configs/llama3_70b.py --workdir /ckpt/70b
python -m experiments.pretrain --config experiments/configs/llama3_70b.py --dry-run

Dry run on 128 x H100 (2026-12-08): fits, 73.3 GiB per GPU, MFU 38.1%. The report gives no
70B layout; this is the one the planner ranks first for this step as XLA compiles it (the dry
run's model: `step="xla"`): tensor 8 (sequence parallel, q/k/v and gate/up fused: Megatron's
communication) x FSDP 16 in Llama 3's mode (weights gathered once per step in bf16, gradients
accumulated and reduced in fp32), one sequence per GPU per micro-batch, selective remat
(every matmul's output kept). Tensor parallelism's traffic over NVLink is what it still
exposes (16.8 s of 77.5). The report's recipe with 70B's peak LR (Table 3).
"""

from llama3_jax.train.config import default_config

M = 1024 * 1024


def get_config(arg: str | None = None):
  c = default_config()
  c.model.update(size="llama3-70b", dtype="bfloat16", remat="minimal", attention="blockwise",
                 fused_matmuls=True)
  c.mesh.update(data=1, fsdp=16, stage=1, tensor=8, dcn_fsdp=16)
  c.sharding.update(fsdp_mode="llama3", gather_dtype="bfloat16", sequence_parallel=True)
  c.train.steps = 1_200_000
  c.train.micro_batches = 64   # 1,024 rows = 16 FSDP replicas x 64 micro-batches x 1 row
  c.train.stages = (dict(until_tokens=252 * M, batch_tokens=4 * M, seq_len=4096),
                    dict(until_tokens=None, batch_tokens=8 * M, seq_len=8192))
  c.train.peak_lr = 1.5e-4
  c.train.warmup_tokens = 8000 * 4 * M
  c.train.anneal_tokens = 40 * M
  c.checkpoint.every_steps = 500
  c.checkpoint.keep_period = 10_000
  c.log.every_steps = 1
  c.runtime.cpu_devices = 0
  return c
