#!/usr/bin/env bash
# Communication and runtime settings for multi-node GPU training, shared by the SLURM script
# (launch/slurm/pretrain.sbatch) and the Kubernetes manifest (launch/k8s/jobset.yaml).
# Source it: `source launch/gpu_env.sh`. Every value can be overridden from the environment.

# --- NCCL (the GPU collectives under XLA) ---
# Llama 3 created 16 network flows between each pair of GPUs instead of 1, so that ECMP
# hashing spreads one pair's traffic over many paths of the fabric (report §3.3.1, E-ECMP);
# with RoCE/InfiniBand, a flow is a queue pair.
export NCCL_IB_QPS_PER_CONNECTION="${NCCL_IB_QPS_PER_CONNECTION:-16}"
# NCCL's warnings (a failed link, a timeout) are the first clue when a job hangs or dies.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

# --- XLA: overlap communication with computation ---
# The latency-hiding scheduler reorders the program so collectives run while matmuls do.
# Pipelined all-gather / reduce-scatter / all-reduce start the next scanned layer's FSDP
# weight gather (and the previous layer's gradient reduce-scatter) during this layer's compute;
# double-buffering the while loop gives them the buffers to do it.
# Larger combine thresholds merge small collectives into few large ones, which use the links
# far better than many small messages.
# Collectives on the highest-priority stream: compute kernels cannot starve them.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
XLA_FLAGS+=" --xla_gpu_enable_pipelined_all_gather=true"
XLA_FLAGS+=" --xla_gpu_enable_pipelined_reduce_scatter=true"
XLA_FLAGS+=" --xla_gpu_enable_pipelined_all_reduce=true"
XLA_FLAGS+=" --xla_gpu_enable_while_loop_double_buffering=true"
XLA_FLAGS+=" --xla_gpu_all_gather_combine_threshold_bytes=134217728"
XLA_FLAGS+=" --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728"
XLA_FLAGS+=" --xla_gpu_all_reduce_combine_threshold_bytes=134217728"
XLA_FLAGS+=" --xla_gpu_enable_highest_priority_async_stream=true"
export XLA_FLAGS

# --- JAX ---
# JAX preallocates 75% of GPU memory by default; training wants nearly all of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
# A compilation cache on shared storage: a restarted job loads its compiled step instead of
# compiling it again (minutes for a large model), time that would count against goodput.
if [[ -n "${LLAMA3_SHARED_DIR:-}" ]]; then
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$LLAMA3_SHARED_DIR/jax_cache}"
fi
