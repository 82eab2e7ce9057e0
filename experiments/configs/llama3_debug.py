"""The embedded default: a tiny Llama 3 on 8 fake CPU devices, ~3.5 minutes on 2 cores.

python -m experiments.pretrain                                   # this config
python -m experiments.pretrain --config experiments/configs/llama3_debug.py:steps=20 \
    --config.mesh.fsdp=2 --config.mesh.tensor=4 --workdir /tmp/run

It runs the whole Llama 3 recipe in miniature: warm-up, cosine, a batch and sequence ramp
(two stages), a final anneal whose checkpoints are averaged, on an fsdp x tensor mesh. Every
field and its default: llama3_jax/train/config.py; this file says only what differs.
"""

import ml_collections

from llama3_jax.train.config import apply_args, default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default_config()
  # 400 steps (1.6M tokens): long enough for a model above chance on both shipped evaluation
  # tasks (at 60 steps it reads a document's style but not an arithmetic question;
  # docs/evaluation.md), and a base the post-training defaults can build on.
  c.train.steps = 400
  c.mesh.fsdp, c.mesh.tensor = -1, 2   # fsdp fills the devices: 4 of 8 (2 with mesh.stage=2)
  # Like Llama 3, more math and multilingual text later in training.
  first, second = c.train.stages
  c.train.stages = (first, {**second, "mixture": {"general": 40.0, "math": 30.0, "code": 17.0,
                                                  "multilingual": 13.0}})
  # Held-out loss per source and the shipped arithmetic task, every 100 steps (metrics.jsonl).
  c.eval.every_steps = 100
  return apply_args(c, arg, {"steps": "train.steps"})
