"""The default runs launchers start from when given none (shared code, not a launcher)."""

import pathlib

PRETRAIN = pathlib.Path("workdirs/pretrain")


def ensure_pretrained(path=PRETRAIN) -> pathlib.Path:
  """`path`, the default pre-training run, trained first if it has no checkpoints."""
  path = pathlib.Path(path)
  if not (path / "checkpoints").exists():
    print(f"no run in {path}: training the default model first (python -m experiments.pretrain)")
    from experiments.configs.llama3_debug import get_config
    from llama3_jax.train.loop import train
    train(get_config(), path)
  return path
