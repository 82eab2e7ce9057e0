"""The default runs launchers start from when given none (shared code, not a launcher)."""

import pathlib

PRETRAIN = pathlib.Path("workdirs/pretrain")


def ensure_pretrained(path=PRETRAIN) -> pathlib.Path:
  """`path`, the default pre-training run, trained first if it has no checkpoints."""
  path = pathlib.Path(path)
  if not (path / "checkpoints").exists():
    print(f"no run in {path}: training the default model first (python -m experiments.pretrain)")
    from experiments.configs.llama3_debug import get_config
    from llama3_jax.train.config import run_config
    from llama3_jax.train.loop import train
    train(run_config(get_config()), path)
  return path


def start_jax(cfg) -> None:
  """JAX configured for a training launcher's run, before its backend starts: fake CPU devices
  (a launcher's JAX_NUM_CPU_DEVICES, e.g. launch.local --devices-per-process, wins over the
  config), the persistent compilation cache, one log line per message."""
  import logging
  import os
  import jax
  if cfg.runtime.cpu_devices and "JAX_NUM_CPU_DEVICES" not in os.environ:
    jax.config.update("jax_num_cpu_devices", cfg.runtime.cpu_devices)
  if cfg.runtime.get("compilation_cache", True) and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # JAX's persistent cache: a relaunch (a restart after preemption, the next run of the same
    # config) loads its compiled programs instead of compiling them again.
    from llama3_jax.data.corpus import cache_dir
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
