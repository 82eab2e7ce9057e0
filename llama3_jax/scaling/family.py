"""A family of Llama 3-shaped models for scaling sweeps: one config per target parameter count.

    config = family_config(200_000)        # a ModelConfig with ~200K matmul parameters
    n = matmul_params(config)              # the N of 6N (what the fits call "params")
    f = flops_per_token(config, seq_len)   # exactly the launcher's MFU count

Depth and width grow together (d_model ~ ASPECT * n_layers, as Llama 3's 8B/70B/405B keep
d_model / n_layers within 100..130); the head dimension and the vocabulary are fixed, grouped-
query attention is kept (KV_GROUPS query heads per KV head), and the SwiGLU hidden size starts
from Meta's rule (1.3 * 8/3 * d, report Table 3) and is then nudged, in multiples of 8, so the
count lands within a few percent of the target (width steps alone jump by ~25%).

Which N: the fits use `matmul_params`, the parameters the launcher's 6N counts (every weight
matrix, the LM head included; not the input embedding, a lookup; not the norms). The report's
6ND is the same kind of count; with total parameters, 6 * 405.9B * 15.6T = 3.8e25 exactly, so
the paper's "3.8e25" is 6ND on total parameters and no attention term. FLOPs per token add the
attention term (12 * L * T * N_heads * H / 2 for the causal mask): the sweep's tokens are
D = C / flops_per_token, so a budget is spent exactly as MFU counts it.
"""

import dataclasses
import math

from llama3_jax.model import ModelConfig
# The N of the fits and the FLOPs of a budget: the launcher's own count (MFU).
from llama3_jax.model.flops import flops_per_token, matmul_params, total_params  # noqa: F401

VOCAB = 512          # the embedded corpus' tokenizer
HEAD_DIM = 8
KV_GROUPS = 2        # query heads per KV head (Llama 3: 8 KV heads for 32..128 query heads)
ASPECT = 16          # d_model per layer at these tiny widths (Llama 3: ~128); deeper than
#                      Llama 3's ratio because a 1-layer model cannot form induction heads and
#                      lost ~0.6 nats to a 2-layer one of half its size in a pilot run
MIN_LAYERS = 2
FFN_MULTIPLE = 8
WIDTH_STEP = HEAD_DIM * KV_GROUPS   # whole KV groups of whole heads
SMALLEST = 12_000    # about the smallest model here: 2 layers, width 16, FFN 24 (12,032)


def _shape(n_layers: int, d_model: int, ffn_dim: int) -> ModelConfig:
  n_heads = d_model // HEAD_DIM
  return ModelConfig(vocab_size=VOCAB, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                     n_kv_heads=max(1, n_heads // KV_GROUPS), head_dim=HEAD_DIM,
                     ffn_dim=ffn_dim, max_seq_len=1024)


def _meta_ffn(d_model: int) -> int:
  return FFN_MULTIPLE * math.ceil(1.3 * (8 / 3) * d_model / FFN_MULTIPLE)


def family_config(target: float, tolerance: float = 0.03) -> ModelConfig:
  """The family's model with `target` matmul parameters (within `tolerance`, relative).

  The depth is the continuous family's (d_model = ASPECT * L, Meta's FFN) rounded, so it grows
  with the target; the width a whole number of KV groups of heads within a step or so of ASPECT
  * L, and the FFN size (1.5x..6x d_model) fine-tunes the count. Where the nominal depth cannot
  reach the target within `tolerance`, a neighbouring depth does.
  """
  if target < SMALLEST:
    raise ValueError(f"{target:,.0f} parameters is below the family's smallest model "
                     f"(~{SMALLEST:,}: {MIN_LAYERS} layers of width {WIDTH_STEP}); ask for more")
  # Depth from the continuous family (d_model = ASPECT * L, Meta's FFN ratio: ~ 35 ASPECT^2
  # L^3 + ASPECT V L matmul parameters), so depth never falls as the target grows.
  def nominal(layers):
    d = ASPECT * layers
    return layers * (3 * d * d + 3 * d * 1.3 * 8 / 3 * d) + d * VOCAB

  low, high = float(MIN_LAYERS), 64.0
  for _ in range(60):
    low, high = (low, (low + high) / 2) if nominal((low + high) / 2) > target else (
        (low + high) / 2, high)
  depth = max(MIN_LAYERS, round(low))
  best = None
  for layers in (depth, depth - 1, depth + 1, depth + 2):   # nominal first, then neighbours
    if layers < MIN_LAYERS:
      continue
    nominal_width = ASPECT * layers / WIDTH_STEP
    for width in sorted({WIDTH_STEP * max(1, math.floor(nominal_width) + k)
                         for k in (-3, -2, -1, 0, 1, 2)}):
      base = _shape(layers, width, FFN_MULTIPLE)
      per_f = 3 * width * layers   # matmul parameters per unit of ffn_dim
      ffn = FFN_MULTIPLE * round((target - matmul_params(base) + per_f * FFN_MULTIPLE)
                                 / per_f / FFN_MULTIPLE)
      ffn = min(max(ffn, FFN_MULTIPLE * math.ceil(1.5 * width / FFN_MULTIPLE)), 6 * width)
      config = _shape(layers, width, ffn)
      error = abs(matmul_params(config) / target - 1)
      # Hitting the target first, at the nominal depth if it can; then closest to Meta's FFN
      # ratio and the nominal aspect ratio.
      miss = error > tolerance
      score = (miss, layers != depth, error if miss else abs(math.log(ffn / _meta_ffn(width)))
               + abs(math.log(width / (ASPECT * layers))))
      if best is None or score < best[0]:
        best = (score, config)
  score, config = best
  if score[0]:
    raise ValueError(f"no model of the family is within {tolerance:.0%} of {target:,.0f} "
                     f"parameters (closest: {matmul_params(config):,}); loosen the tolerance")
  return config


def describe(config: ModelConfig) -> dict:
  """The shape fields a sweep records per point."""
  return {"n_layers": config.n_layers, "d_model": config.d_model, "n_heads": config.n_heads,
          "n_kv_heads": config.n_kv_heads, "head_dim": config.head_dim,
          "ffn_dim": config.ffn_dim, "params": matmul_params(config),
          "total_params": total_params(config)}


def model_overrides(config: ModelConfig) -> dict:
  """The `cfg.model` fields that build `config` in the launcher's schema."""
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if f.name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                        "head_dim", "ffn_dim", "max_seq_len")}
