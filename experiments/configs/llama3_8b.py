"""Llama 3 8B pre-training on one 8-GPU node (the report's recipe with 8B's peak LR).

python -m experiments.pretrain --config experiments/configs/llama3_8b.py \
    --workdir /ckpt/llama3_8b --config.train.steps=1000
python -m experiments.pretrain --config experiments/configs/llama3_8b.py --dry-run
python -m experiments.pretrain --config experiments/configs/llama3_8b.py:gpus=64 --dry-run \
    --dry-run-devices 64

Dry run on 8 x H100 (2026-12-08): fits, 54.0 GiB per GPU, MFU 48.0% (the plan of this step as
XLA compiles it; selective remat: every matmul's output kept, nothing but the norms, RoPE and
SwiGLU's product recomputed in backward). FSDP fills the GPUs;
`gpus` (default 8) sets the micro-batches so that each GPU runs one sequence at a time (1,024
rows per batch / gpus), gradients accumulated over them in fp32.
"""

from llama3_jax.train.config import default_config

M = 1024 * 1024
ROWS = 1024   # rows of every stage's batch: 4M tokens of 4,096, then 8M of 8,192


def get_config(arg: str | None = None):
  gpus = int(arg.split("=", 1)[1]) if arg else 8
  c = default_config()
  # Selective remat: every matmul's output kept, so backward recomputes no matmul (full remat
  # would recompute every block's forward: 36.5% instead of 48.0%).
  c.model.update(size="llama3-8b", dtype="bfloat16", remat="minimal", attention="blockwise")
  c.mesh.fsdp, c.mesh.tensor = -1, 1
  # ZeRO-3: on 8 GPUs, Llama 3's mode would keep the whole model gathered in fp32 with its fp32
  # gradients (60 GiB per GPU); ZeRO-3 re-gathers layer by layer, hidden behind the compute.
  c.sharding.fsdp_mode = "zero3"
  c.train.micro_batches = max(1, ROWS // gpus)   # one sequence per GPU per micro-batch
  c.train.steps = 1_200_000
  c.train.stages = (dict(until_tokens=252 * 1000 * M, batch_tokens=4 * M, seq_len=4096),
                    dict(until_tokens=None, batch_tokens=8 * M, seq_len=8192))
  c.train.peak_lr = 3e-4
  c.train.warmup_tokens = 8000 * 4 * M
  c.train.anneal_tokens = 40 * 1000 * M
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep_period = 10_000
  c.log.every_steps = 10
  c.runtime.cpu_devices = 0
  return c
