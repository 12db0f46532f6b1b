"""GPU and memory-controller utilization."""

from __future__ import annotations

import pynvml

from ..nvml import Reader
from .base import Collector, GpuMetric, Sample

GPU = GpuMetric(
    "gpu_utilization_ratio", "Share of the last sample period in which a kernel ran on the GPU (0-1).", "utilization"
)
MEMORY = GpuMetric(
    "gpu_memory_utilization_ratio",
    "Share of the last sample period in which device memory was read or written (0-1).",
    "memory_utilization",
)


def _read(r: Reader, s: Sample) -> None:
    u = r.call("nvmlDeviceGetUtilizationRates", pynvml.nvmlDeviceGetUtilizationRates, r.device.handle)
    if u is not None:
        s["utilization"] = u.gpu / 100.0  # NVML: percent
        s["memory_utilization"] = u.memory / 100.0


COLLECTOR = Collector(name="utilization", help="GPU and memory utilization", metrics=(GPU, MEMORY), reads=_read)
