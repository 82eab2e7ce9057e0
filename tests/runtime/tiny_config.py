"""A tiny pre-training config for the runtime tests: the embedded corpus, an fsdp x tensor mesh.

python -m launch.local --processes 2 --devices-per-process 4 -- python -m experiments.pretrain \
    --config tests/runtime/tiny_config.py --workdir /tmp/tiny
"""

from experiments.configs.llama3_debug import base_config


def get_config(arg: str | None = None):
  c = base_config()
  c.model.update(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                 ffn_dim=48, max_seq_len=64)
  c.mesh.update(fsdp=4, tensor=2)
  c.train.update(steps=6, stages=((None, 8 * 16, 16),),   # one batch shape: one compile
                 warmup_tokens=2 * 128, anneal_tokens=2 * 256, peak_lr=1e-2)
  c.checkpoint.update(every_steps=1, max_to_keep=20, async_save=True)
  c.log.every_steps = 1
  c.mfu.peak_flops = 1e12
  return c
