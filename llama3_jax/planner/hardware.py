"""Accelerator data sheets the planner prices layouts on: memory, dense bf16 FLOP/s, links.

    hw = get_hardware("h100")      # UserError listing the known names for any other

Bandwidths are per GPU and per direction, in bytes/s. `nvlink` is the GPU's NVLink bandwidth
inside a node (NVIDIA quotes the bidirectional total: 900 GB/s on Hopper = 450 GB/s each way);
`network` is its share of the scale-out fabric (one 400 Gb/s ConnectX-7 NIC per GPU on
DGX/HGX H100, H200 and B200 nodes and on Meta's Llama 3 clusters, report §3.3.1: 50 GB/s; one
200 Gb/s HDR NIC per GPU on DGX A100: 25 GB/s). Memory is what a job can allocate: the HBM
capacity as the driver reports it (an "80 GB" H100 shows 81,559 MiB in nvidia-smi).
"""

import dataclasses

from llama3_jax.errors import UserError

GB = 1e9
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  memory_bytes: float
  peak_flops: float        # dense bf16 tensor-core FLOP/s (no sparsity)
  nvlink: float            # bytes/s per GPU per direction, inside a node
  network: float           # bytes/s per GPU per direction, between nodes
  gpus_per_node: int = 8
  source: str = ""


HARDWARE = {
    # NVIDIA H100 Tensor Core GPU data sheet (SXM5): 80 GB HBM3, BF16 1,979 TFLOP/s with
    # sparsity = 989 dense, NVLink 900 GB/s. 81,559 MiB as nvidia-smi reports it.
    "h100": Hardware("H100 80GB SXM", 81_559 * MIB, 989e12, 450 * GB, 50 * GB,
                     source="NVIDIA H100 data sheet (SXM5); 400 Gb/s NIC per GPU"),
    # NVIDIA H200 data sheet: 141 GB HBM3e, the same compute and NVLink as H100 SXM.
    "h200": Hardware("H200 141GB SXM", 141 * GB, 989e12, 450 * GB, 50 * GB,
                     source="NVIDIA H200 data sheet (SXM); 400 Gb/s NIC per GPU"),
    # NVIDIA A100 data sheet (SXM4 80GB): BF16 312 TFLOP/s dense, NVLink 600 GB/s.
    "a100": Hardware("A100 80GB SXM", 81_920 * MIB, 312e12, 300 * GB, 25 * GB,
                     source="NVIDIA A100 data sheet (SXM4 80GB); 200 Gb/s HDR NIC per GPU"),
    # NVIDIA HGX B200 spec: 180 GB HBM3e per GPU, BF16 4.5 PFLOP/s with sparsity = 2.25 dense,
    # NVLink 5 1.8 TB/s.
    "b200": Hardware("B200 180GB SXM", 180 * GB, 2250e12, 900 * GB, 50 * GB,
                     source="NVIDIA HGX B200 spec sheet; 400 Gb/s NIC per GPU"),
}


def get_hardware(name: str) -> Hardware:
  key = name.lower().replace("-", "").replace(" ", "")
  for alias, hw in HARDWARE.items():
    if key in (alias, alias + "sxm", hw.name.lower().replace(" ", "")):
      return hw
  raise UserError(f"unknown hardware {name!r}", f"choose one of {', '.join(HARDWARE)}")
