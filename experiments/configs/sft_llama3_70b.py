"""Llama 3.1 70B SFT (report §4.1.3: lr 1e-5, cosine) on 8 nodes of 8 H100s: FSDP over all 64.

python -m experiments.sft --config experiments/configs/sft_llama3_70b.py --dry-run
python -m experiments.sft --config experiments/configs/sft_llama3_70b.py \
    --config.init.path=/ckpt/Llama-3.1-70B --config.data.path=/data/sft.jsonl --workdir /ckpt/sft

The starting model (a training workdir or a Hugging Face directory: init.path) is read straight
onto this layout, each process only its shards. ZeRO-3 over 64 GPUs (the fp32 masters gathered
layer by layer; bf16 compute), full remat, blockwise attention; 512 rows of 8,192 tokens per
step, 4 micro-batches of 2 rows per GPU. Dry run on 64 x H100 (2026-12-07): fits, 73.8 GiB per
GPU, MFU 35.7% (--config.train.micro_batches=8: 51.9 GiB, 17.9%, for more headroom).
"""

import ml_collections

from experiments.configs import sft_llama3_8b


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sft_llama3_8b.get_config()
  c.model.update(size="llama3.1-70b", dtype="bfloat16", remat="full", attention="blockwise")
  c.init.path = ""   # set: --config.init.path=/ckpt/Llama-3.1-70B
  c.mesh.update(data=1, fsdp=64, stage=1, tensor=1, dcn_fsdp=8)
  c.sharding.fsdp_mode = "zero3"
  c.train.micro_batches = 4   # 512 rows = 64 GPUs x 4 micro-batches x 2 rows
  return c
