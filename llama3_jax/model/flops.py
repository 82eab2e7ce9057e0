"""Parameter counts and training FLOPs of a `ModelConfig`: the one place these formulas live.

    flops_per_token(config, seq_len)   # 6N + causal attention: what MFU divides by

Training FLOPs per token are 6N (forward + backward of every matmul weight: attention, MLP and
the LM head; the input embedding is a lookup and not counted) plus attention's score and value
matmuls, 12 * L * T * N_heads * H, halved for the causal mask (Chinchilla's and the PaLM MFU
paper's convention). MFU (train/metrics.py), the scaling-law family (scaling/family.py) and
the planner (planner/) all count with these.
"""


def layer_matmul_params(config) -> int:
  """q, k, v, o and the three MLP matrices of one block."""
  D, N, K, H, F = (config.d_model, config.n_heads, config.n_kv_heads, config.head_dim,
                   config.ffn_dim)
  return D * N * H * 2 + D * K * H * 2 + 3 * D * F


def head_params(config) -> int:
  """The LM head ([D, V]; tied or not, it is a matmul)."""
  return config.d_model * config.vocab_size


def matmul_params(config) -> int:
  """The weights 6N counts: every block's matmuls and the LM head (not the embedding)."""
  return config.n_layers * layer_matmul_params(config) + head_params(config)


def total_params(config) -> int:
  """Every parameter: matmuls, the input embedding (untied) and the RMSNorm scales."""
  embed = 0 if config.tie_embeddings else config.vocab_size * config.d_model
  norms = (2 * config.n_layers + 1) * config.d_model
  return matmul_params(config) + embed + norms


def attention_flops_per_token(config, seq_len: int) -> float:
  """Scores and values, forward and backward, under the causal mask: 12 L T N H / 2."""
  return 12 * config.n_layers * seq_len * config.n_heads * config.head_dim / 2


def flops_per_token(config, seq_len: int) -> float:
  """Training FLOPs per token of a `seq_len`-token sequence."""
  return 6 * matmul_params(config) + attention_flops_per_token(config, seq_len)
