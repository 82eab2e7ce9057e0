"""The layout planner: per-device memory and step time (MFU) of a training layout, and a
search over layouts. Run it as `python -m experiments.plan`."""

from llama3_jax.planner.hardware import HARDWARE, Hardware, get_hardware
from llama3_jax.planner.layout import Layout, Reason, why_not
from llama3_jax.planner.memory import memory
from llama3_jax.planner.step_time import collectives, step_time

__all__ = ["HARDWARE", "Hardware", "Layout", "Reason", "collectives", "get_hardware", "memory",
           "step_time", "why_not"]
