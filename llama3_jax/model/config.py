"""Model configuration and the Llama 3 size table.

Numbers come from "The Llama 3 Herd of Models" (arXiv 2407.21783), Table 3, and from Meta's
released configs for Llama 3.1 and 3.2 (the same numbers Hugging Face ships). The exact parameter
counts are asserted in tests/model/test_config.py with `jax.eval_shape`, so nothing is allocated.
"""

import dataclasses
import math

from llama3_jax.model.attention_ops import KERNELS

REMATS = ("none", "minimal", "save_names", "full")   # see ModelConfig.remat


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama 3.1 RoPE frequency scaling ("llama3" rope type in Hugging Face).

  Wavelengths longer than `original_max_position / low_freq_factor` are stretched by `factor`,
  shorter than `original_max_position / high_freq_factor` are kept, and the band between is
  interpolated smoothly.
  """
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the model's shapes and numerics.

  Letters used for dimensions across the code: B batch, T query length, S key length, D d_model,
  F ffn_dim, N query heads, K KV heads, G = N / K, H head_dim, L layers, V vocab.
  """
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  ffn_dim: int
  norm_eps: float = 1e-5
  rope_theta: float = 500_000.0
  rope_scaling: RopeScaling | None = None   # None = Llama 3.0 (no frequency scaling)
  max_seq_len: int = 8192
  tie_embeddings: bool = False              # Llama 3.2 1B/3B tie input and output embeddings
  init_std: float = 0.02
  # Numerics: parameters are stored in `param_dtype`, matmuls run in `dtype`; logits are fp32.
  param_dtype: str = "float32"
  dtype: str = "float32"
  # Execution: how layers run, what the backward pass keeps, which attention kernel.
  scan_layers: bool = True                  # False: a Python loop over layers (for debugging)
  # What backward keeps of each block: "none" everything, "minimal" every matmul's output
  # (the rest recomputed), "save_names" the outputs `remat_names` names, "full" the block's
  # input alone (transformer.kept_names).
  remat: str = "none"
  remat_names: tuple[str, ...] = ("attn_out", "mlp_out")  # kept by remat="save_names"
  # q/k/v and gate/up each as one matmul (Megatron's fused layers), the stored weights unchanged:
  # with tensor parallelism backward then reduces two input gradients per layer, not five.
  # Off by default: the same numbers up to summation order (not bit for bit on CPU).
  fused_matmuls: bool = False
  attention: str = "reference"              # a kernel of attention_ops.KERNELS
  attention_block_q: int = 512
  attention_block_kv: int = 512

  def __post_init__(self):
    problems = []
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                 "ffn_dim"):
      if getattr(self, name) <= 0:
        problems.append(f"{name}={getattr(self, name)} must be positive")
    if self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads:
      problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads="
                      f"{self.n_kv_heads}; grouped-query attention needs whole groups")
    if self.head_dim % 2:
      problems.append(f"head_dim={self.head_dim} must be even for rotary embeddings")
    if self.remat not in REMATS:
      problems.append(f"remat={self.remat!r}; use one of {', '.join(map(repr, REMATS))}")
    if self.attention not in KERNELS:
      problems.append(f"attention={self.attention!r}; use one of {', '.join(map(repr, KERNELS))}")
    if self.attention == "cudnn" and self.dtype == "float32":
      problems.append("attention='cudnn' runs in bfloat16 or float16 only (cuDNN's fused "
                      "attention has no fp32 kernel); set dtype='bfloat16' or use "
                      "attention='reference'")
    if self.attention == "cudnn" and (self.head_dim % 8 or self.head_dim > 256):
      problems.append(f"attention='cudnn' needs head_dim a multiple of 8 and <= 256 (<= 128 "
                      f"before Hopper), got {self.head_dim}; use attention='blockwise'")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        problems.append(f"{name}={getattr(self, name)!r}; use float32, bfloat16 or float16")
    if problems:
      raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

  @property
  def n_groups(self) -> int:
    return self.n_heads // self.n_kv_heads

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def ffn_dim(d_model: int, multiplier: float, multiple_of: int) -> int:
  """SwiGLU hidden size as Meta's reference code computes it: 8/3 * d, scaled, rounded up."""
  hidden = int(2 * (4 * d_model) / 3)
  hidden = int(multiplier * hidden)
  return multiple_of * math.ceil(hidden / multiple_of)


_LLAMA3 = dict(vocab_size=128_256, n_kv_heads=8, head_dim=128)
_LLAMA31_ROPE = dict(rope_scaling=RopeScaling(factor=8.0), max_seq_len=131_072)
_LLAMA32_ROPE = dict(rope_scaling=RopeScaling(factor=32.0), max_seq_len=131_072)

_8B = dict(_LLAMA3, d_model=4096, n_layers=32, n_heads=32, ffn_dim=ffn_dim(4096, 1.3, 1024))
_70B = dict(_LLAMA3, d_model=8192, n_layers=80, n_heads=64, ffn_dim=ffn_dim(8192, 1.3, 4096))
_405B = dict(_LLAMA3, d_model=16384, n_layers=126, n_heads=128,
             ffn_dim=ffn_dim(16384, 1.2, 4096))

SIZES: dict[str, ModelConfig] = {
    # Llama 3.0: 8K context, no RoPE scaling (report Table 3).
    "llama3-8b": ModelConfig(**_8B),
    "llama3-70b": ModelConfig(**_70B),
    "llama3-405b": ModelConfig(**_405B),
    # Llama 3.1: same shapes, RoPE scaled to 128K.
    "llama3.1-8b": ModelConfig(**_8B, **_LLAMA31_ROPE),
    "llama3.1-70b": ModelConfig(**_70B, **_LLAMA31_ROPE),
    "llama3.1-405b": ModelConfig(**_405B, **_LLAMA31_ROPE),
    # Llama 3.2 text models: tied embeddings.
    "llama3.2-1b": ModelConfig(vocab_size=128_256, d_model=2048, n_layers=16, n_heads=32,
                               n_kv_heads=8, head_dim=64, ffn_dim=8192, tie_embeddings=True,
                               **_LLAMA32_ROPE),
    "llama3.2-3b": ModelConfig(vocab_size=128_256, d_model=3072, n_layers=28, n_heads=24,
                               n_kv_heads=8, head_dim=128, ffn_dim=8192, tie_embeddings=True,
                               **_LLAMA32_ROPE),
    # A few-MB model for CPU runs and tests. Sizes differ from each other (N*H != D, F not a
    # multiple of D) so that a transposed or mis-reshaped weight fails loudly.
    "debug": ModelConfig(vocab_size=512, d_model=160, n_layers=3, n_heads=8, n_kv_heads=4,
                         head_dim=24, ffn_dim=352, max_seq_len=1024),
}
# The debug model extended to long context the way Llama 3.1 was (8K -> 128K, RoPE factor 8),
# at 1/16 scale: 512 -> 4,096 tokens (experiments/configs/llama3_long_context.py).
SIZES["debug-long"] = SIZES["debug"].replace(
    rope_scaling=RopeScaling(factor=8.0, original_max_position=512), max_seq_len=4096)
