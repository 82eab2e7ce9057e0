"""Parallelism written by hand with shard_map / vmap over one mesh axis each: `pipeline` (the
stage axis) and `context` (the context axis: attention over a sequence split across ranks)."""
