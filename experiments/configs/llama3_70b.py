"""Llama 3 70B pre-training on 16 nodes of 8 GPUs: tensor 8 inside a node, FSDP 16 across.

python -m experiments.pretrain --config experiments/configs/llama3_70b.py --workdir /ckpt/70b
python -m experiments.pretrain --config experiments/configs/llama3_70b.py --dry-run

The report gives no 70B layout; this one keeps tensor parallelism on NVLink and shards the
rest over FSDP (ZeRO-3, see below). The report's recipe with 70B's peak LR (Table 3).
"""

from llama3_jax.train.config import default_config

M = 1024 * 1024


def get_config(arg: str | None = None):
  c = default_config()
  c.model.update(size="llama3-70b", dtype="bfloat16", remat="full", attention="blockwise")
  c.mesh.update(data=1, fsdp=16, stage=1, tensor=8, dcn_fsdp=16)
  # ZeRO-3, not Llama 3's mode: this step gathers the fp32 masters, and keeping all of a
  # tensor rank's 70B / 8 gathered (with its fp32 gradients) would take 66 GiB per GPU
  # (python -m experiments.pretrain --config ... --dry-run prints the plan).
  c.sharding.fsdp_mode = "zero3"
  c.sharding.sequence_parallel = True
  c.train.steps = 1_200_000
  c.train.micro_batches = 16
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
