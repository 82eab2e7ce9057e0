"""The 5-axis device mesh and the checks that a model and batch fit it.

    mesh = make_mesh(MeshConfig(fsdp=-1, tensor=2))          # 8 devices -> fsdp 4 x tensor 2
    validate(MeshConfig(...), model_config, global_batch=64, seq_len=4096, n_devices=8)

Axis order follows Llama 3 (report §3.3.2): `tensor` innermost, on the fastest links, then
`context`, `stage`, and `data` / `fsdp` outermost. On a multi-node cluster the `dcn_*` sizes say
how many nodes (slices) each axis spans; the rest of the axis lies inside a node, so with
`dcn_tensor=1` tensor parallelism never crosses a node.
"""

import dataclasses
import math

import jax
import numpy as np
from jax.experimental import mesh_utils

from llama3_jax.errors import UserError

# Mesh axes, outermost (slowest links) first.
AXES = ("data", "fsdp", "stage", "context", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; their product is the device count, one size may be -1 (fill)."""
  data: int = 1
  fsdp: int = -1
  stage: int = 1
  context: int = 1
  tensor: int = 1
  # Across nodes (slices): the number of nodes each axis spans. All 1 = a single node.
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_stage: int = 1
  dcn_context: int = 1
  dcn_tensor: int = 1

  def sizes(self, n_devices: int) -> dict[str, int]:
    """Axis sizes with the -1 axis filled in, validated against the device count."""
    sizes = {axis: getattr(self, axis) for axis in AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    bad = [f"{axis}={size}" for axis, size in sizes.items() if size == 0 or size < -1]
    if bad or len(fill) > 1:
      raise ValueError(f"Mesh axis sizes {sizes}: sizes must be positive, with at most one -1 "
                       f"(fill); fix {', '.join(bad) or ' and '.join(fill)}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if fill:
      if n_devices % known:
        raise ValueError(f"Mesh axes {_fmt(sizes)} cannot fill {n_devices} devices: "
                         f"{n_devices} is not a multiple of {known}. Choose sizes whose "
                         f"product divides {n_devices}.")
      sizes[fill[0]] = n_devices // known
    elif known != n_devices:
      raise ValueError(f"Mesh axes {_fmt(sizes)} multiply to {known}, but there are "
                       f"{n_devices} devices. Make the product {n_devices}, or set one axis "
                       "to -1 to fill.")
    return sizes

  def dcn_sizes(self) -> dict[str, int]:
    return {axis: getattr(self, "dcn_" + axis) for axis in AXES}


def parse_mesh(text: str, flag: str = "--mesh") -> dict[str, int]:
  """`tensor=8,stage=16,fsdp=128` as axis sizes (axes not named: absent)."""
  sizes = {}
  for item in filter(None, text.split(",")):
    axis, _, value = item.strip().partition("=")
    if axis not in AXES or not value.lstrip("-").isdigit():
      raise UserError(f"{flag}: bad entry {item!r}", f"write axis=size with axes from {AXES}, "
                      "e.g. tensor=8,stage=16,fsdp=128")
    sizes[axis] = int(value)
  return sizes


def make_mesh(config: MeshConfig, devices=None) -> jax.sharding.Mesh:
  """A Mesh with axes AXES (Auto axis types) over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.sharding.Mesh(device_array(config, devices), AXES, axis_types=auto)


def device_array(config: MeshConfig, devices) -> np.ndarray:
  """Devices arranged with shape (data, fsdp, stage, context, tensor)."""
  sizes = config.sizes(len(devices))
  shape = tuple(sizes[axis] for axis in AXES)
  dcn = config.dcn_sizes()
  if math.prod(dcn.values()) == 1:
    return mesh_utils.create_device_mesh(shape, devices)

  for axis in AXES:
    if sizes[axis] % dcn[axis]:
      raise ValueError(f"Axis {axis}={sizes[axis]} does not split over dcn_{axis}="
                       f"{dcn[axis]} nodes; make {axis} a multiple of dcn_{axis}")
  ici_shape = tuple(sizes[a] // dcn[a] for a in AXES)
  dcn_shape = tuple(dcn[a] for a in AXES)
  # TPU slices carry slice_index; elsewhere each process is one node (one process per node).
  by_process = not hasattr(devices[0], "slice_index")
  return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices,
                                              process_is_granule=by_process)


def abstract_mesh(sizes: dict[str, int]) -> jax.sharding.AbstractMesh:
  """A mesh without devices, for planning layouts (e.g. 16K GPUs) on a laptop."""
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.sharding.AbstractMesh(tuple(sizes.get(a, 1) for a in AXES), AXES, axis_types=auto)


def validate(config: MeshConfig, model, *, n_devices: int, global_batch: int | None = None,
             seq_len: int | None = None, rows_over_stage: bool = True) -> dict[str, int]:
  """Checks that `model` (a ModelConfig) and the batch split evenly over the mesh (the rows over
  `stage` too unless `rows_over_stage` is off: ShardingConfig.rows_over_stage).

  Raises one ValueError listing every problem, each with the axis, the numbers and a fix;
  returns the filled-in axis sizes.
  """
  sizes = config.sizes(n_devices)
  t = sizes["tensor"]
  problems = []
  for name, value in (("n_heads", model.n_heads), ("ffn_dim", model.ffn_dim),
                      ("vocab_size", model.vocab_size)):
    if value % t:
      problems.append(f"{name}={value} is not divisible by tensor={t}; choose tensor among "
                      f"{_divisors(value, limit=n_devices)}")
  # KV heads may be fewer than `tensor` (then they are replicated, as Llama 3 does with 8 KV
  # heads); otherwise they must split evenly.
  if model.n_kv_heads >= t and model.n_kv_heads % t:
    problems.append(f"n_kv_heads={model.n_kv_heads} is not divisible by tensor={t}; choose "
                    f"tensor dividing {model.n_kv_heads}, or tensor > n_kv_heads to replicate")
  if model.n_kv_heads < t and t % model.n_kv_heads:
    problems.append(f"tensor={t} is not a multiple of n_kv_heads={model.n_kv_heads}; "
                    "replicated KV heads need whole copies per head; choose tensor as a multiple "
                    f"of {model.n_kv_heads}")
  if model.d_model % sizes["fsdp"]:
    problems.append(f"d_model={model.d_model} is not divisible by fsdp={sizes['fsdp']} (FSDP "
                    "splits every weight along d_model); choose fsdp among "
                    f"{_divisors(model.d_model, limit=n_devices)}, or a d_model that is a "
                    f"multiple of {sizes['fsdp']}")
  # Any layer count pipelines (llama3_jax/parallel/pipeline.py pads the stages' chunks), but
  # every stage needs a layer.
  if model.n_layers < sizes["stage"]:
    problems.append(f"n_layers={model.n_layers} cannot fill stage={sizes['stage']} (every "
                    f"stage needs a layer); choose stage of at most {model.n_layers}")
  # Rows split over data x fsdp, and over stage too outside the pipelined blocks.
  over = ("data", "fsdp", "stage") if rows_over_stage else ("data", "fsdp")
  batch_shards = math.prod(sizes[axis] for axis in over)
  if global_batch is not None and global_batch % batch_shards:
    problems.append(f"global batch {global_batch} is not divisible by {'*'.join(over)}="
                    f"{batch_shards}; use a batch that is a multiple of {batch_shards}")
  if seq_len is not None and context_chunk_problem(seq_len, sizes["context"]):
    problems.append(context_chunk_problem(seq_len, sizes["context"]))
  if problems:
    raise ValueError(f"Mesh {_fmt(sizes)} does not fit: " + "; ".join(problems))
  return sizes


def context_chunk_problem(seq_len: int, context: int) -> str | None:
  """Why `seq_len` cannot be split for context parallelism over `context` ranks, or None."""
  chunks = 2 * context
  if context == 1 or seq_len % chunks == 0:
    return None
  below, above = seq_len // chunks * chunks, (seq_len // chunks + 1) * chunks
  return (f"sequence length {seq_len} is not divisible by 2*context={chunks} (context={context}; "
          "context parallelism cuts each sequence into 2*context load-balanced chunks); use a "
          f"sequence length that is a multiple of {chunks} (e.g. {below or above} or {above}), "
          f"or a context size whose double divides {seq_len}")


def _fmt(sizes: dict[str, int]) -> str:
  return " x ".join(f"{axis}={size}" for axis, size in sizes.items())


def _divisors(n: int, limit: int) -> list[int]:
  return [d for d in range(1, min(n, limit) + 1) if n % d == 0]
