"""Inference: the Llama 3 chat format, KV-cache decoding with sampling, prefix sharing."""
