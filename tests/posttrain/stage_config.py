"""A tiny post-training stage for the multi-process tests: 4 steps of SFT, DPO or a reward model
on an fsdp=4 x tensor=2 mesh, from the model at --config.init.path.

python -m launch.local --processes 2 --devices-per-process 4 -- python -m experiments.sft \
    --config tests/posttrain/stage_config.py:sft --config.init.path=RUN \
    --config.data.path=sft.jsonl --workdir /tmp/sft
"""

from tests.helpers import tiny_run_config

SEQ = 128


def get_config(arg: str = "sft"):
  c = tiny_run_config(steps=4, stages=((None, 8 * SEQ, SEQ),), fsdp=4, tensor=2)
  c.model.size = "init"
  for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
               "ffn_dim", "max_seq_len"):
    c.model[name] = None     # unset: the model of init.path
  c.train.update(warmup_tokens=None, warmup_fraction=0.25, anneal_tokens=0, peak_lr=3e-3)
  if arg == "dpo":
    c.dpo.max_examples_per_row = 4
  return c
