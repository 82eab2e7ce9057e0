"""Llama 3's SFT recipe (report §4.1.3) for an 8B model on one 8-GPU node: lr 1e-5, cosine.

python -m experiments.sft --config experiments/configs/sft_llama3_8b.py --dry-run
python -m experiments.sft --config experiments/configs/sft_llama3_8b.py \
    --config.init.path=/ckpt/Llama-3.1-8B --config.data.path=/data/sft.jsonl --workdir /ckpt/sft

512 rows of 8,192 tokens per step, ZeRO-3 over the 8 GPUs, bf16 compute, selective remat
(every matmul's output kept), blockwise attention, one row per GPU per micro-batch: the step of
llama3_8b.py's pre-training. Dry run on 8 x H100 (2026-12-08): fits, 54.0 GiB per GPU, MFU 48.0%.
"""

import ml_collections

from experiments.configs import sft


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sft.get_config()
  c.model.update(size="llama3.1-8b", dtype="bfloat16", remat="minimal", attention="blockwise")
  c.init.path = ""   # set: --config.init.path=/ckpt/Llama-3.1-8B (a run or an HF directory)
  # ZeRO-3 over the node, as llama3_8b.py: one sequence per GPU per micro-batch
  c.mesh.update(data=1, fsdp=-1, stage=1, tensor=1)
  c.sharding.fsdp_mode = "zero3"
  c.train.micro_batches = 64   # 512 rows = 8 GPUs x 64 micro-batches x 1 row
  c.train.steps = 8000
  c.train.stages = (dict(until_tokens=None, batch_tokens=512 * 8192, seq_len=8192,
                         mixture=None),)
  c.train.peak_lr = 1e-5
  c.train.warmup_fraction = 0.03
  c.checkpoint.every_steps = 500
  c.runtime.cpu_devices = 0
  return c
